"""Deny by default: who may not send is refused, audited, and nothing of it is stored.

Everything runs the real gateway process against a real Orthanc (``running``: one site,
``COUNTY_A`` from loopback), on every database backend.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select, text

from conftest import SENDER_AE, Center, wait_until
from core.models import AuditRecord, Instance
from core.sites import remove_site
from devkit.dcmtk import SendResult, storescu

#: A-ASSOCIATE-RJ (result, source, diagnostic), PS3.8 9.3.4: rejected-permanent by the
#: service user because the calling / called AE title is not recognised.
CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)
CALLED_AE_NOT_RECOGNISED = (0x01, 0x01, 0x07)
UNKNOWN_SOP_CLASS = "1.2.3.4.5.6.7.8.9"


# Helpers ----------------------------------------------------------------------------
def _ct_small() -> Path:
    return Path(get_testdata_file("CT_small.dcm"))


def _associate(c: Center, calling: str = SENDER_AE, called: str | None = None,
               contexts: tuple[str, ...] = (Verification, CTImageStorage)) -> Association:
    ae = AE(ae_title=calling)
    for cx in contexts:
        ae.add_requested_context(cx, ExplicitVRLittleEndian)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    return ae.associate("127.0.0.1", c.gateway_port, ae_title=called or c.gateway_ae)


def _attempt(c: Center, calling: str = SENDER_AE,
             called: str | None = None) -> tuple[int, int, int] | str:
    """Try to associate and store CT_small; the A-ASSOCIATE-RJ parameters, or what happened."""
    assoc = _associate(c, calling, called)
    if assoc.is_established:
        try:
            rsp = assoc.send_c_store(_ct_small())
        finally:
            assoc.release()
        return f"association accepted; C-STORE answered {rsp.get('Status')!r}"
    rj = assoc.acceptor.primitive
    if not assoc.is_rejected or rj is None:
        return f"no A-ASSOCIATE-RJ (aborted={assoc.is_aborted})"
    return int(rj.result), int(rj.result_source), int(rj.diagnostic)


def _send(c: Center, files: list[Path], calling: str = SENDER_AE,
          called: str | None = None) -> SendResult:
    return storescu(files, host="127.0.0.1", port=c.gateway_port, calling_ae=calling,
                    called_ae=called or c.gateway_ae, timeout=120)


def _audit(c: Center, action: str) -> list[tuple[int, dict[str, Any]]]:
    with c.db.session() as s:
        rows = s.execute(select(AuditRecord.seq, AuditRecord.detail)
                         .where(AuditRecord.action == action).order_by(AuditRecord.seq))
        return [(int(seq), dict(detail)) for seq, detail in rows]


def _rejections(c: Center, calling_ae: str, n: int = 1) -> list[dict[str, Any]]:
    """The audited rejections of ``calling_ae`` (waits for ``n`` of them)."""
    def found() -> list[dict[str, Any]]:
        return [d for _, d in _audit(c, "association.reject") if d.get("calling_ae") == calling_ae]

    return list(wait_until(lambda: len(found()) >= n and found(), 10,
                           f"{n} audited rejection(s) of {calling_ae}"))


def _instances(c: Center) -> int:
    with c.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(Instance)) or 0)


def _assert_nothing_stored(c: Center) -> None:
    assert _instances(c) == 0, "a receipt was recorded for a refused sender"
    assert c.spool_files() == [], f"spool files from a refused sender: {c.spool_files()}"
    with c.orthanc() as client:
        assert client.statistics()["CountInstances"] == 0, "Orthanc holds instances"


# 1. Unknown sender ---------------------------------------------------------------------
def test_unknown_calling_ae_is_rejected_audited_and_stores_nothing(running: Center) -> None:
    c = running
    dcmtk = _send(c, [_ct_small()], calling="STRANGER_DCMTK")
    pynd = _attempt(c, calling="STRANGER_PYND")

    # Nothing got in, and each refusal is in the audit trail with the calling AE.
    assert dcmtk.succeeded == [] and not dcmtk.statuses, dcmtk.output
    assert dcmtk.returncode != 0, dcmtk.output
    for calling in ("STRANGER_DCMTK", "STRANGER_PYND"):
        details = _rejections(c, calling)
        assert len(details) == 1, details
        d = details[0]
        assert d["peer"] == "127.0.0.1" and d["called_ae"] == c.gateway_ae, d
        assert d["rsd"] == list(CALLING_AE_NOT_RECOGNISED), d
        assert "not registered" in d["reason"], d
    with c.db.session() as s:
        rec = s.scalar(select(AuditRecord).where(AuditRecord.action == "association.reject")
                       .order_by(AuditRecord.seq))
        assert rec is not None and rec.actor == "gateway"
        assert rec.object_id == "STRANGER_DCMTK@127.0.0.1"
    assert not _audit(c, "association.accept"), "an association of a stranger was accepted"
    _assert_nothing_stored(c)

    # The peer is told why: A-ASSOCIATE-RJ, rejected-permanent, calling AE not recognised.
    assert pynd == CALLING_AE_NOT_RECOGNISED, \
        f"pynetdicom saw {pynd}, expected A-ASSOCIATE-RJ {CALLING_AE_NOT_RECOGNISED}"
    assert dcmtk.rejected, f"storescu did not see an A-ASSOCIATE-RJ:\n{dcmtk.output}"
    assert "Calling AE Title Not Recognized" in dcmtk.output, dcmtk.output


# 2. Registered AE title, disallowed peer address -----------------------------------------
def test_registered_ae_from_disallowed_address_is_rejected(running: Center) -> None:
    c = running
    c.add_site("county-z", ae_title="COUNTY_Z", allowed=("10.9.9.9/32",), port=11198)
    outcome = _attempt(c, calling="COUNTY_Z")

    d = _rejections(c, "COUNTY_Z")[0]
    assert d["peer"] == "127.0.0.1" and d["rsd"] == list(CALLING_AE_NOT_RECOGNISED), d
    _assert_nothing_stored(c)
    # The same check lets the registered site in from its own address.
    assoc = _associate(c, SENDER_AE)
    assert assoc.is_established, f"COUNTY_A from loopback was refused\n{c.logs()}"
    assert int(assoc.send_c_echo().Status) == 0x0000
    assoc.release()

    assert outcome == CALLING_AE_NOT_RECOGNISED, \
        f"pynetdicom saw {outcome}, expected A-ASSOCIATE-RJ {CALLING_AE_NOT_RECOGNISED}"


# 3. Wrong called AE title -------------------------------------------------------------------
def test_wrong_called_ae_is_rejected(running: Center) -> None:
    c = running
    pynd = _attempt(c, called="NOT_THE_CENTER")
    dcmtk = _send(c, [_ct_small()], called="NOT_CENTER_2")

    details = wait_until(lambda: len(_audit(c, "association.reject")) >= 2
                         and [d for _, d in _audit(c, "association.reject")], 10,
                         "two audited rejections")
    assert [d["called_ae"] for d in details] == ["NOT_THE_CENTER", "NOT_CENTER_2"], details
    for d in details:
        assert d["calling_ae"] == SENDER_AE and d["rsd"] == list(CALLED_AE_NOT_RECOGNISED), d
        assert d["reason"] == "called AE title not recognised", d
    assert dcmtk.succeeded == [] and not dcmtk.statuses, dcmtk.output
    _assert_nothing_stored(c)

    assert pynd == CALLED_AE_NOT_RECOGNISED, \
        f"pynetdicom saw {pynd}, expected A-ASSOCIATE-RJ {CALLED_AE_NOT_RECOGNISED}"
    assert dcmtk.rejected and "Called AE Title Not Recognized" in dcmtk.output, dcmtk.output


# 4. Unknown SOP class ----------------------------------------------------------------------
def _unknown_class_file(tmp_path: Path, meta_class: str) -> Path:
    """CT_small re-labelled with a private SOP class; the file meta says ``meta_class``."""
    ds = dcmread(_ct_small())
    ds.SOPClassUID = UNKNOWN_SOP_CLASS
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = meta_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = tmp_path / f"unknown-{meta_class}.dcm"
    ds.save_as(path)  # as it is: the file meta may disagree with the dataset
    meta = dcmread(path, stop_before_pixels=True).file_meta
    assert meta.MediaStorageSOPClassUID == meta_class
    return path


def test_unknown_sop_class_is_refused_and_audited(running: Center, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    c = running
    path = _unknown_class_file(tmp_path, UNKNOWN_SOP_CLASS)

    # Proposed as its own abstract syntax: the context is rejected, the store cannot happen.
    assoc = _associate(c, contexts=(UNKNOWN_SOP_CLASS, Verification))
    assert assoc.is_established, f"Verification alone should be accepted\n{c.logs()}"
    try:
        assert [str(cx.abstract_syntax) for cx in assoc.rejected_contexts] == \
            [UNKNOWN_SOP_CLASS]
        assert [str(cx.abstract_syntax) for cx in assoc.accepted_contexts] == [Verification]
        with pytest.raises(ValueError, match="presentation context"):
            assoc.send_c_store(dcmread(path))
        assert int(assoc.send_c_echo().Status) == 0x0000
    finally:
        assoc.release()

    # Smuggled in through an accepted CT context (the file meta claims CT Image Storage,
    # the dataset does not): refused with a failure status.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    smuggled = _unknown_class_file(tmp_path, CTImageStorage)
    assoc = _associate(c, contexts=(CTImageStorage,))
    assert assoc.is_established
    try:
        status = int(assoc.send_c_store(smuggled).Status)
    finally:
        assoc.release()
    assert status == 0xA900, f"0x{status:04X}"

    _assert_nothing_stored(c)
    refused = wait_until(lambda: [d for _, d in _audit(c, "association.accept")
                                  if d.get("refused_sop_classes")], 10,
                         "the refused SOP class in the audit trail")
    assert len(refused) == 1, refused
    for d in refused:
        assert d["refused_sop_classes"] == [UNKNOWN_SOP_CLASS], d
        assert d["calling_ae"] == SENDER_AE, d
    releases = wait_until(lambda: len(_audit(c, "association.release")) >= 2
                          and _audit(c, "association.release"), 10, "both associations released")
    assert sum(int(d["stored"]) for _, d in releases) == 0, releases
    assert sum(int(d["refused"]) for _, d in releases) == 1, releases


# 5. A removed site can no longer send --------------------------------------------------------
def test_removed_site_can_no_longer_send(running: Center) -> None:
    c = running
    # county-a has sent a study, so removing it only disables it; county-b never sent and
    # is deleted.  Neither may send afterwards.
    sent = _send(c, [_ct_small()])
    assert sent.succeeded == [_ct_small()], sent.output
    def stored() -> bool:
        # A fresh session each time: one held open would hold the embedded database's
        # write lock and keep the gateway from recording the upload.
        with c.db.session() as s:
            return s.scalar(select(Instance.state)) == "stored"
    wait_until(stored, 30, "the instance stored")
    c.add_site("county-b", ae_title="COUNTY_B", port=11197)
    assoc = _associate(c, "COUNTY_B")
    assert assoc.is_established, f"COUNTY_B refused before its removal\n{c.logs()}"
    assoc.release()

    with c.db.session() as s:
        assert remove_site(s, "county-a", actor="test") == "disabled"
        assert remove_site(s, "county-b", actor="test") == "deleted"

    outcomes = {ae: _attempt(c, calling=ae) for ae in (SENDER_AE, "COUNTY_B")}
    dcmtk = _send(c, [_ct_small()])
    assert dcmtk.succeeded == [] and not dcmtk.statuses, dcmtk.output
    assert len(_rejections(c, SENDER_AE, n=2)) == 2  # pynetdicom and storescu
    assert len(_rejections(c, "COUNTY_B")) == 1
    assert _instances(c) == 1, "a removed site got a receipt"
    assert c.spool_files() == [], f"spool files from a removed site: {c.spool_files()}"
    with c.orthanc() as client:
        assert client.statistics()["CountInstances"] == 1, "a removed site stored something"
    removals = [d for _, d in _audit(c, "site.remove")]
    assert removals == [{"outcome": "disabled"}, {"outcome": "deleted"}], removals

    assert outcomes == {SENDER_AE: CALLING_AE_NOT_RECOGNISED,
                        "COUNTY_B": CALLING_AE_NOT_RECOGNISED}, outcomes
    assert dcmtk.rejected, dcmtk.output


# 6. The audit chain -----------------------------------------------------------------------------
def _verify(c: Center) -> tuple[int, str]:
    r = c.rdc("audit", "verify")
    return r.returncode, " ".join((r.stdout + r.stderr).split())


def test_audit_verify_passes_then_detects_tampering_and_truncation(running: Center) -> None:
    c = running
    _attempt(c, calling="STRANGER")
    _attempt(c, called="NOT_THE_CENTER")
    assert _send(c, [_ct_small()]).succeeded == [_ct_small()]
    _rejections(c, "STRANGER")
    wait_until(lambda: _audit(c, "association.release"), 10, "the store association audited")
    c.stop_gateway()  # no appends while the chain is examined

    with c.db.session() as s:
        total = int(s.scalar(select(func.count()).select_from(AuditRecord)) or 0)
    rc, out = _verify(c)
    assert rc == 0, out
    assert f"audit log intact: {total} records verified" in out, out

    # Tamper with the rejection of the stranger: the chain breaks at that record.
    seq, original = next((q, d) for q, d in _audit(c, "association.reject")
                         if d["calling_ae"] == "STRANGER")
    forged = {**original, "calling_ae": SENDER_AE, "reason": "nothing happened"}
    update = text("UPDATE audit_log SET detail = :detail WHERE seq = :seq")
    with c.db.engine.begin() as conn:
        assert conn.execute(update, {"detail": json.dumps(forged), "seq": seq}).rowcount == 1
    rc, out = _verify(c)
    assert rc == 1, out
    assert f"audit log broken at record {seq}" in out, out
    assert "content does not match its hash" in out, out

    # Put it back as it was: intact again.
    with c.db.engine.begin() as conn:
        conn.execute(update, {"detail": json.dumps(original), "seq": seq})
    rc, out = _verify(c)
    assert rc == 0, out

    # Delete the last record: the head still counts it, so the truncation shows.
    with c.db.engine.begin() as conn:
        last = int(conn.execute(text("SELECT max(seq) FROM audit_log")).scalar_one())
        assert last == total
        conn.execute(text("DELETE FROM audit_log WHERE seq = :seq"), {"seq": last})
    rc, out = _verify(c)
    assert rc == 1, out
    assert f"audit log broken at record {last}" in out, out
    assert "removed from the end" in out, out
