"""Signing lab results with the reader's own key: one signature per result.

Why per result and not one signature over a batch: a result is what goes back to the
site, what a later rerun corrects and what a dispute is about; a signature over the
batch would tie a result's validity to every other result signed with it.  So signing
several results at once signs each one separately (its own canonical content, hash
and envelope), and does it all or nothing: every result is checked and the key
unlocked before the first one changes, and the caller's transaction carries all of
them.

The signature is the center's e-signature of reports (:mod:`reports.envelope`): the
key from :func:`reports.keys.unlock_for_signing`, the canonical JSON of
:func:`reports.canonical.canonical_bytes` (with the lab's own schema name), and the
hash that goes with the key's algorithm (SM3 for SM2).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import audit
from core.crypto import SignatureInvalid, digest, hash_algorithm
from core.errors import Conflict, InvalidInput, NotFound
from core.models import LabOrder, LabResult, LabSpecimen
from core.settings import Settings
from lab.results_out import release
from lab.states import ResultState, check_result
from reports import envelope as envelope_mod
from reports.canonical import canonical_bytes
from reports.envelope import format_time, make_sealer
from reports.keys import ca_certificate_pem, revocations, unlock_for_signing

__all__ = ["SCHEMA", "canonical_content", "sign_results", "verify_result"]

log = logging.getLogger(__name__)

#: The schema of a signed lab result's canonical content.
SCHEMA: Final = "rdc-lab-result-1"
#: States a reviewer signs: a held result becomes verified; an autoverified one (already
#: released by the rules) gets the reviewer's signature on top and stays as it is.
_SIGNABLE: Final = frozenset({ResultState.HELD, ResultState.AUTOVERIFIED})


def canonical_content(result: LabResult, order: LabOrder, specimen: LabSpecimen, *,
                      reviewer: str, signed_at: datetime) -> dict[str, Any]:
    """What a result's signature covers, as JSON types: the result and whose it is, the
    value with its units, range and flag, the rules that fired, who signed and when."""
    return {
        "schema": SCHEMA,
        "result_id": result.id,
        "order": {"placer": order.placer_order_number, "filler": order.filler_order_number},
        "specimen": specimen.accession,
        "patient": {"site": result.site_id, "id": result.patient_id},
        "test": result.test_code,
        "loinc": result.loinc,
        "value": result.value,
        "value_text": result.value_text,
        "units": result.units,
        "range": {"low": result.ref_low, "high": result.ref_high},
        "flag": result.abnormal_flag,
        "critical": result.critical,
        "rules_fired": sorted(str(r.get("rule", "")) for r in result.rules_fired or []),
        "reviewer": reviewer,
        "signed_at": format_time(signed_at),
    }


def _load(session: Session, result_ids: Sequence[int]) -> list[LabResult]:
    ids = list(dict.fromkeys(result_ids))
    if not ids:
        raise InvalidInput("name at least one result to sign")
    rows = {r.id: r for r in session.scalars(select(LabResult).where(LabResult.id.in_(ids)))}
    missing = [i for i in ids if i not in rows]
    if missing:
        raise NotFound(f"no lab result {', '.join(map(str, missing))}")
    return [rows[i] for i in ids]


def _refusal(result: LabResult) -> str | None:
    if result.signed_at is not None:
        return f"result {result.id} is already signed by {result.signed_by} at " \
               f"{result.signed_at.isoformat()}"
    if result.state not in _SIGNABLE:
        return f"result {result.id} is {result.state}: only held or autoverified results " \
               "are signed"
    if result.qc_hold:
        return f"result {result.id} is on a QC hold ({result.qc_hold}): rerun it or release " \
               "the hold with a reason first"
    if result.value is None and not (result.value_text or "").strip():
        return f"result {result.id} has no value to sign"
    return None


def sign_results(session: Session, settings: Settings, result_ids: Sequence[int], *,
                 reader_id: str, passphrase: str, key_id: int | None = None,
                 actor: str | None = None) -> list[LabResult]:
    """Sign each result with the reader's own key; all or nothing.

    Refused with nothing changed when a result does not exist, is not held or
    autoverified, is already signed, has no value, or is on a QC hold; or when the
    key is not the reader's, not active, or the passphrase is wrong.  Held results
    become ``verified`` and are released to their sites (:func:`lab.results_out.release`).
    """
    actor = actor or reader_id
    results = _load(session, result_ids)
    refusals = [why for why in map(_refusal, results) if why]
    if refusals:
        raise Conflict("nothing signed: " + "; ".join(refusals))
    material = unlock_for_signing(session, reader_id=reader_id, passphrase=passphrase,
                                  key_id=key_id)
    orders = {o.id: o for o in session.scalars(select(LabOrder).where(
        LabOrder.id.in_({r.order_id for r in results})))}
    specimens = {s.id: s for s in session.scalars(select(LabSpecimen).where(
        LabSpecimen.id.in_({r.specimen_id for r in results})))}
    signed_at = datetime.now(UTC).replace(microsecond=0)
    hash_alg = hash_algorithm(material.key.algorithm)
    seal = make_sealer(material.private_key, material.key.cert_pem.encode(),
                       material.key.algorithm, signed_at)
    to_release: list[LabResult] = []
    for result in results:
        content = canonical_bytes(canonical_content(
            result, orders[result.order_id], specimens[result.specimen_id],
            reviewer=reader_id, signed_at=signed_at))
        if result.state == ResultState.HELD:
            check_result(result.state, ResultState.VERIFIED)
            result.state = ResultState.VERIFIED
            result.review_action = "approve"
            result.reviewed_by, result.reviewed_at = reader_id, signed_at
            to_release.append(result)
        result.signed_by, result.signer_key_id, result.signed_at = (
            reader_id, material.key.id, signed_at)
        result.canonical = content.decode("utf-8")
        result.hash_algorithm = hash_alg
        result.content_hash = digest(hash_alg, content).hex()
        result.envelope = seal(content).decode("ascii")
        result.updated_at = signed_at
        audit.append(session, actor=actor, action="lab.sign", object_type="lab_result",
                     object_id=str(result.id), detail={
                         "key_fingerprint": material.key.fingerprint,
                         "algorithm": material.key.algorithm,
                         "content_hash": result.content_hash, "state": result.state})
    session.flush()
    if to_release:
        release(session, to_release, actor=actor)
    log.info("lab.signed results=%s reader=%s alg=%s", [r.id for r in results], reader_id,
             material.key.algorithm)
    return results


def verify_result(session: Session, settings: Settings, result_id: int) -> envelope_mod.Verified:
    """Check a signed result: its envelope against its stored canonical content (the
    center's CA, revocations), and that content against the result as stored now.

    Raises :class:`SignatureInvalid` naming the failed check: a changed value, range or
    flag after signing fails here even though the stored envelope still matches its
    stored canonical bytes.
    """
    result = session.get(LabResult, result_id)
    if result is None:
        raise NotFound(f"no lab result {result_id}")
    if result.canonical is None or result.envelope is None or result.signed_at is None:
        raise Conflict(f"result {result_id} is not signed")
    verified = envelope_mod.verify(result.canonical.encode("utf-8"),
                                   result.envelope.encode("ascii"),
                                   ca_certificate_pem(settings), revoked=revocations(session))
    order = session.get(LabOrder, result.order_id)
    specimen = session.get(LabSpecimen, result.specimen_id)
    assert order is not None and specimen is not None  # foreign keys
    now = canonical_bytes(canonical_content(result, order, specimen,
                                            reviewer=result.signed_by or "",
                                            signed_at=result.signed_at)).decode("utf-8")
    if now != result.canonical:
        raise SignatureInvalid(
            f"result {result_id} no longer matches what {result.signed_by} signed: "
            f"{_changed(result.canonical, now)}")
    if result.content_hash != verified.content_hash:
        raise SignatureInvalid(f"result {result_id}: the stored content hash is not the "
                               "signed one")
    return verified


def _changed(signed: str, now: str) -> str:
    before, after = json.loads(signed), json.loads(now)
    keys = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    return ", ".join(f"{k} signed {before.get(k)!r}, now {after.get(k)!r}" for k in keys)
