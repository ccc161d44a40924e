"""Signing lab results: one signature per result, all or nothing, checked afterwards."""

from __future__ import annotations

import json

import pytest
from lab_review_support import PASSPHRASE, Measured, make_order, make_site
from sqlalchemy import func, select

from conftest import Center
from core.crypto import SignatureInvalid
from core.errors import Conflict, Forbidden, NotFound
from core.models import AuditRecord, LabResult, OutboundMessage, ReaderKey
from core.pki import WrongPassphrase
from lab.review import review
from lab.signing import sign_results, verify_result
from reports.keys import issue_key

QC_HOLD = "QC reject on CHEM1 run R7: 2-2s (across levels)"


@pytest.fixture
def lab(env_center: Center) -> Center:
    make_site(env_center, "county-a")
    with env_center.db.session() as s:
        issue_key(s, env_center.settings, reader_id="rev.li", display_name="李审核",
                  passphrase=PASSPHRASE, actor="test")
        issue_key(s, env_center.settings, reader_id="rev.wang", display_name="王审核",
                  passphrase=PASSPHRASE, actor="test")
    return env_center


def _signed_count(c: Center) -> int:
    with c.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(LabResult).where(
            LabResult.signed_at.is_not(None))) or 0)


def test_batch_sign_gives_each_result_its_own_verifiable_signature(lab: Center) -> None:
    with lab.db.session() as s:
        order, spec, rows = make_order(s, [Measured("K", 5.9, "held", "H", rules=("delta",)),
                                           Measured("NA", 150.0, "held", "H"),
                                           Measured("GLU", 5.1, "autoverified")])
        ids = [r.id for r in rows]
        accession = spec.accession
        filler = order.filler_order_number

    with lab.db.session() as s:
        signed = sign_results(s, lab.settings, ids, reader_id="rev.li", passphrase=PASSPHRASE)
        assert [r.id for r in signed] == ids
        assert [r.state for r in signed] == ["verified", "verified", "autoverified"]

    with lab.db.session() as s:
        rows = list(s.scalars(select(LabResult).where(LabResult.id.in_(ids))
                              .order_by(LabResult.id)))
        assert [r.id for r in rows] == ids
        hashes = {r.content_hash for r in rows if r is not None}
        envelopes = {r.envelope for r in rows if r is not None}
        assert len(hashes) == 3 and len(envelopes) == 3  # one signature per result
        k = rows[0]
        assert k is not None and k.canonical is not None
        content = json.loads(k.canonical)
        assert content["schema"] == "rdc-lab-result-1"
        assert content["result_id"] == ids[0]
        assert content["specimen"] == accession
        assert content["order"]["filler"] == filler
        assert content["patient"] == {"site": "county-a", "id": "P001"}
        assert (content["test"], content["loinc"], content["value"], content["units"]) == (
            "K", "2823-3", 5.9, "mmol/L")
        assert content["range"] == {"low": 3.5, "high": 5.3}
        assert content["flag"] == "H" and content["rules_fired"] == ["delta"]
        assert content["reviewer"] == "rev.li"
        for i in ids:
            verified = verify_result(s, lab.settings, i)
            assert verified.reader_id == "rev.li"
            assert verified.signer_name == "李审核"
        # The two held results became verified and went to the site in one ORU.
        assert rows[0] is not None and rows[1] is not None
        assert rows[0].message_id is not None and rows[0].message_id == rows[1].message_id
        message = s.get(OutboundMessage, rows[0].message_id)
        assert message is not None and "|rev.li|" in message.body
        assert len(s.scalars(select(AuditRecord).where(AuditRecord.action == "lab.sign"))
                   .all()) == 3
        # Signed once is signed: a second signing is refused.
        with pytest.raises(Conflict, match="already signed"):
            sign_results(s, lab.settings, ids[:1], reader_id="rev.li", passphrase=PASSPHRASE)


def test_tampering_is_detected(lab: Center) -> None:
    with lab.db.session() as s:
        _, _, rows = make_order(s, [Measured("K", 5.9, "held", "H"),
                                    Measured("NA", 150.0, "held", "H"),
                                    Measured("CL", 100.0, "held")])
        ids = [r.id for r in rows]
    with lab.db.session() as s:
        sign_results(s, lab.settings, ids, reader_id="rev.li", passphrase=PASSPHRASE)

    with lab.db.session() as s:
        k, na, cl = (s.get(LabResult, i) for i in ids)
        assert k is not None and na is not None and cl is not None
        k.value = 5.8  # the value changed after signing
        na.canonical = (na.canonical or "").replace("150.0", "140.0")  # the signed text
        cl.envelope = (cl.envelope or "").replace('"signature":"', '"signature":"AA', 1)
        s.flush()
        with pytest.raises(SignatureInvalid, match=r"value signed 5.9, now 5.8"):
            verify_result(s, lab.settings, ids[0])
        with pytest.raises(SignatureInvalid, match="content hash does not match"):
            verify_result(s, lab.settings, ids[1])
        with pytest.raises(SignatureInvalid):
            verify_result(s, lab.settings, ids[2])
        s.rollback()
    with lab.db.session() as s:
        assert verify_result(s, lab.settings, ids[0]).reader_id == "rev.li"


def test_wrong_passphrase_or_key_signs_nothing(lab: Center) -> None:
    with lab.db.session() as s:
        _, _, rows = make_order(s, [Measured("K", 5.9, "held", "H"),
                                    Measured("NA", 150.0, "held", "H")])
        ids = [r.id for r in rows]
        wang_key = s.scalar(select(ReaderKey.id).where(ReaderKey.reader_id == "rev.wang"))
    with pytest.raises(WrongPassphrase), lab.db.session() as s:
        sign_results(s, lab.settings, ids, reader_id="rev.li", passphrase="not the passphrase")
    with pytest.raises(Forbidden, match="a reader signs only with their own key"), \
            lab.db.session() as s:
        sign_results(s, lab.settings, ids, reader_id="rev.li", passphrase=PASSPHRASE,
                     key_id=wang_key)
    with pytest.raises(Conflict, match="no active signing key"), lab.db.session() as s:
        sign_results(s, lab.settings, ids, reader_id="rev.nobody", passphrase=PASSPHRASE)
    with pytest.raises(NotFound, match="no lab result 99999"), lab.db.session() as s:
        sign_results(s, lab.settings, [*ids, 99999], reader_id="rev.li",
                     passphrase=PASSPHRASE)
    assert _signed_count(lab) == 0
    with lab.db.session() as s:
        assert {r.state for r in s.scalars(select(LabResult))} == {"held"}
        assert s.scalar(select(func.count()).select_from(OutboundMessage)) == 0


def test_qc_held_result_is_refused_until_released(lab: Center) -> None:
    with lab.db.session() as s:
        _, _, rows = make_order(s, [Measured("K", 5.9, "held", "H", qc_hold=QC_HOLD),
                                    Measured("NA", 150.0, "held", "H")])
        ids = [r.id for r in rows]
    with pytest.raises(Conflict, match=r"nothing signed: .*QC hold .*2-2s"), \
            lab.db.session() as s:
        sign_results(s, lab.settings, ids, reader_id="rev.li", passphrase=PASSPHRASE)
    assert _signed_count(lab) == 0  # not even the result without a hold

    with lab.db.session() as s:
        review(s, ids[0], "release", actor="rev.li",
               reason="second control level in range on repeat; shift explained")
    with lab.db.session() as s:
        done = sign_results(s, lab.settings, ids, reader_id="rev.li", passphrase=PASSPHRASE)
        assert [r.state for r in done] == ["verified", "verified"]
    assert _signed_count(lab) == 2
