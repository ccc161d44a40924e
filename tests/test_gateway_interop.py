"""Interoperability: pydicom's whole test corpus through the real gateway.

Every valid storage object sent with DCMTK ``storescu`` must reach Orthanc with the very
dataset that was sent.  Every file of the corpus, malformed ones included, sent raw with
pynetdicom must be refused with a failure status or stored intact, and the gateway keeps
serving throughout.  Everything runs the real gateway process against a real Orthanc, on
every database backend of ``running``.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.dsutils import split_dataset
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import select

from conftest import SENDER_AE, Center, wait_until
from core.models import Instance
from core.orthanc_client import OrthancClient
from devkit.dcmtk import storescu
from devkit.samples import pydicom_test_files, storage_sample_files
from dicom_compare import same_dataset

_IGNORED = re.compile(r"in file: (.+), ignoring file\s*$")
#: storescu may decline to read a handful of files that pydicom reads; no more than this.
MAX_STORESCU_IGNORED = 5


# Helpers ----------------------------------------------------------------------------
def _receipts(c: Center) -> list[Any]:
    with c.db.session() as s:
        return list(s.execute(select(Instance.id, Instance.sop_instance_uid, Instance.state,
                                     Instance.site_id, Instance.last_error)).all())


def _sop_uid(path: Path) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return str(dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _is_success(status: int) -> bool:
    return status == 0x0000


def _is_warning(status: int) -> bool:
    return status == 0x0001 or 0xB000 <= status <= 0xBFFF


# 1. DCMTK storescu: every valid storage object arrives identical -----------------------
def test_storescu_sends_every_pydicom_storage_object_intact(running: Center) -> None:
    c = running
    files = storage_sample_files()
    assert len(files) >= 100, f"only {len(files)} storage samples found in pydicom's test data"
    sop_of = {p: _sop_uid(p) for p in files}
    assert len(set(sop_of.values())) == len(files), "storage samples share SOP Instance UIDs"

    # The wrapper sends each transfer syntax group in its own association, exactly as encoded.
    result = storescu(files, host="127.0.0.1", port=c.gateway_port, calling_ae=SENDER_AE,
                      called_ae=c.gateway_ae, timeout=300)
    output = result.output
    assert not result.rejected, f"an association was rejected\n{output[-3000:]}"

    # Files storescu itself declined to read are accounted for, by name.
    ignored = sorted({Path(m.group(1).strip()) for line in output.splitlines()
                      if (m := _IGNORED.search(line))})
    assert set(ignored) <= set(files), f"storescu ignored unexpected paths: {ignored}"
    assert len(ignored) <= MAX_STORESCU_IGNORED, \
        f"storescu ignored {len(ignored)} files: {[p.name for p in ignored]}"
    sent = [p for p in files if p not in ignored]

    statuses = result.statuses
    unanswered = [p.name for p in sent if p not in statuses]
    assert not unanswered, \
        f"no C-STORE response for {unanswered} (storescu ignored {[p.name for p in ignored]})" \
        f"\n{output[-4000:]}\n{c.logs()}"
    not_ok = {p.name: s for p, s in statuses.items() if not s.startswith("Success")}
    assert not not_ok, f"not acknowledged with Success: {not_ok}\n{c.logs()}"
    # A non-zero exit is acceptable only from a group whose every file storescu ignored
    # (it then has no presentation context to propose); nothing else may be fatal.
    fatal = [line for line in output.splitlines() if line.startswith("F:")
             and "missing presentation contexts" not in line]
    assert not fatal, f"storescu failed: {fatal}\n{output[-3000:]}"
    assert result.returncode == 0 or ignored, output[-3000:]

    acked = {sop_of[p]: p for p in sent}

    def settled() -> bool:
        rows = _receipts(c)
        return len(rows) >= len(acked) and all(r.state in ("stored", "failed") for r in rows)

    wait_until(settled, 90, "every receipt uploaded to Orthanc")
    rows = _receipts(c)
    by_sop = {r.sop_instance_uid: r for r in rows}
    assert len(rows) == len(acked), f"{len(rows)} receipts for {len(acked)} acknowledged files"
    missing = [p.name for uid, p in acked.items() if uid not in by_sop]
    assert not missing, f"acknowledged but no receipt: {missing}"
    bad = {acked[r.sop_instance_uid].name: (r.state, r.site_id, r.last_error)
           for r in rows if r.state != "stored" or r.site_id != "county-a"}
    assert not bad, f"receipts not 'stored' for county-a: {bad}\n{c.logs()}"

    differ: dict[str, str] = {}
    with c.orthanc() as client:
        assert client.statistics()["CountInstances"] == len(acked)
        for uid, path in acked.items():
            orthanc_id = client.find_instance(uid)
            if orthanc_id is None:
                differ[path.name] = "not in Orthanc"
                continue
            ok, why = same_dataset(path.read_bytes(), client.instance_file(orthanc_id))
            if not ok:
                differ[path.name] = why
    assert not differ, f"{len(differ)} of {len(acked)} instances differ in Orthanc: {differ}"
    assert c.spool_files() == [], "spool files kept after upload"


# 2. Raw files with pynetdicom: refused or stored intact ---------------------------------
@dataclass
class _Plan:
    """How one corpus file is sent: the file, its presentation context, and why."""

    path: Path
    send_path: Path
    sop_class: str
    sop_instance: str
    transfer_syntax: str
    note: str = ""


_TS_BY_ENCODING = {
    (True, True): ImplicitVRLittleEndian,
    (False, True): ExplicitVRLittleEndian,
    (False, False): ExplicitVRBigEndian,
}


def _plan(path: Path, scratch: Path) -> _Plan | str:
    """The send plan for ``path``, or why pynetdicom cannot send it at all."""
    if not path.is_file():
        return "not a file"
    try:
        meta, offset = split_dataset(path)
    except InvalidDicomError as e:
        return f"no Part 10 header: {e}"
    sop_class = str(meta.get("MediaStorageSOPClassUID", "") or "")
    sop_instance = str(meta.get("MediaStorageSOPInstanceUID", "") or "")
    tsyntax = str(meta.get("TransferSyntaxUID", "") or "")
    if sop_class and sop_instance and tsyntax:
        return _Plan(path, path, sop_class, sop_instance, tsyntax)
    # An incomplete file meta: pynetdicom cannot choose a presentation context.  Give the
    # encoded dataset, byte for byte, a complete header so that the gateway's parser sees it;
    # a file without SOP Class UID is proposed as CT Image Storage.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = dcmread(path, stop_before_pixels=True, force=True)
    note = []
    if not sop_class:
        sop_class = str(ds.get("SOPClassUID", "") or "") or CTImageStorage
        note.append(f"SOP class {sop_class}")
    if not sop_instance:
        sop_instance = str(ds.get("SOPInstanceUID", "") or "") or str(generate_uid())
        note.append("SOP instance")
    if not tsyntax:
        tsyntax = _TS_BY_ENCODING[(bool(ds.is_implicit_VR), bool(ds.is_little_endian))]
        note.append(f"transfer syntax {tsyntax}")
    new_meta = FileMetaDataset()
    new_meta.MediaStorageSOPClassUID = sop_class
    new_meta.MediaStorageSOPInstanceUID = sop_instance
    new_meta.TransferSyntaxUID = tsyntax
    new_meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    out = scratch / f"{path.parent.name}-{path.name}"
    with open(out, "wb") as fp:
        fp.write(b"\0" * 128 + b"DICM")
        write_file_meta_info(fp, new_meta, enforce_standard=True)  # type: ignore[arg-type]
        fp.write(path.read_bytes()[offset:])
    return _Plan(path, out, sop_class, sop_instance, tsyntax,
                 note="file meta completed: " + ", ".join(note))


def _associate(c: Center, contexts: list[tuple[str, str]]) -> Association:
    ae = AE(ae_title=SENDER_AE)
    for abstract, ts in contexts:
        ae.add_requested_context(abstract, ts)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    assoc = ae.associate("127.0.0.1", c.gateway_port, ae_title=c.gateway_ae)
    assert assoc.is_established, f"the gateway refused the association\n{c.logs()}"
    return assoc


def _echo(c: Center) -> int:
    assoc = _associate(c, [(Verification, ExplicitVRLittleEndian)])
    try:
        rsp = assoc.send_c_echo()
    finally:
        if assoc.is_established:
            assoc.release()
    assert "Status" in rsp, f"no C-ECHO response\n{c.logs()}"
    return int(rsp.Status)


@pytest.fixture
def raw_file_sending(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Send each file's encoded dataset from disk, as it is, without decoding it.
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    yield


@dataclass
class _Outcome:
    stored: dict[str, str] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    context_refused: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    seen_receipts: set[str] = field(default_factory=set)


def _send_raw(c: Center, client: OrthancClient, assoc: Association, name: str, plan: _Plan,
              msg_id: int, out: _Outcome) -> None:
    """Send one file as it is encoded and sort the outcome: stored intact, or refused."""
    try:
        rsp = assoc.send_c_store(plan.send_path, msg_id=msg_id)
    except ValueError as e:
        # The gateway declined the presentation context: nothing can be sent.
        assert not any(cx.abstract_syntax == plan.sop_class
                       and cx.transfer_syntax[0] == plan.transfer_syntax
                       for cx in assoc.accepted_contexts), f"{name}: {e}"
        out.context_refused[name] = f"{plan.sop_class} / {plan.transfer_syntax}"
        return
    if "Status" not in rsp:
        out.problems[name] = f"no C-STORE response (association aborted?) {plan.note}"
        return
    status = int(rsp.Status)
    comment = str(rsp.get("ErrorComment", ""))
    new = [r for r in _receipts(c) if r.id not in out.seen_receipts]
    out.seen_receipts.update(r.id for r in new)
    if _is_warning(status):
        out.problems[name] = f"warning status 0x{status:04X} ({comment}) {plan.note}"
        return
    if not _is_success(status):
        out.refused[name] = f"0x{status:04X} {comment}"
        if new:
            out.problems[name] = f"refused with 0x{status:04X} but a receipt was recorded"
        return
    if len(new) != 1:
        out.problems[name] = f"acknowledged, but {len(new)} new receipts"
        return
    rid = new[0].id
    row = wait_until(lambda: next((r for r in _receipts(c) if r.id == rid
                                   and r.state in ("stored", "failed")), None),
                     30, f"{name} uploaded", interval=0.02)
    if row.state != "stored" or row.site_id != "county-a":
        out.problems[name] = f"acknowledged but receipt {row.state} for {row.site_id} " \
                             f"({row.last_error}) {plan.note}"
        return
    orthanc_id = client.find_instance(row.sop_instance_uid)
    if orthanc_id is None:
        out.problems[name] = "acknowledged and 'stored' but not in Orthanc"
        return
    ok, why = same_dataset(plan.send_path.read_bytes(), client.instance_file(orthanc_id))
    # Several corpus files share a SOP Instance UID: make room for the next one.
    client.delete("instances", orthanc_id)
    if ok:
        out.stored[name] = f"{plan.transfer_syntax} {plan.note}".strip()
    else:
        out.problems[name] = f"acknowledged but Orthanc holds a different dataset: {why} " \
                             f"{plan.note}"


#: Files per association: a few presentation contexts each, far below pynetdicom's 128.
RAW_BATCH = 12


def test_every_raw_pydicom_file_is_refused_or_stored_intact(
        running: Center, tmp_path: Path, raw_file_sending: None) -> None:
    c = running
    scratch = tmp_path / "fixed-meta"
    scratch.mkdir()
    corpus = pydicom_test_files()
    assert len(corpus) >= 150, f"only {len(corpus)} files in pydicom's test data"

    root = Path(os.path.commonpath(corpus))
    unsendable: dict[str, str] = {}
    plans: list[tuple[str, _Plan]] = []
    for path in corpus:
        name = str(path.relative_to(root))
        plan = _plan(path, scratch)
        if isinstance(plan, str):
            unsendable[name] = plan
        else:
            plans.append((name, plan))

    out = _Outcome()
    with c.orthanc() as client:
        for start in range(0, len(plans), RAW_BATCH):
            batch = plans[start:start + RAW_BATCH]
            contexts = sorted({(p.sop_class, p.transfer_syntax) for _, p in batch})
            contexts.append((Verification, ExplicitVRLittleEndian))
            assoc: Association | None = None
            try:
                for msg_id, (name, plan) in enumerate(batch, 1):
                    if assoc is None or not assoc.is_established:
                        # A new association after an abort: the gateway must still accept.
                        assoc = _associate(c, contexts)
                    _send_raw(c, client, assoc, name, plan, msg_id, out)
            finally:
                if assoc is not None and assoc.is_established:
                    assoc.release()
            assert c.gateway_proc is not None and c.gateway_proc.poll() is None, \
                f"the gateway died after {[n for n, _ in batch]}\n{c.logs()}"
    stored, refused, problems = out.stored, out.refused, out.problems
    context_refused = out.context_refused

    print(f"stored {len(stored)}, refused {len(refused)}, context refused "
          f"{len(context_refused)}, not sendable {len(unsendable)}")
    for title, group in (("refused", refused), ("context refused", context_refused),
                         ("not sendable", unsendable)):
        for k, v in sorted(group.items()):
            print(f"{title}: {k}: {v}")
    # Every file of the corpus is accounted for exactly once.
    assert len(unsendable) + len(context_refused) + len(refused) + len(stored) \
        + len(problems) == len(corpus)
    assert not problems, "files neither refused nor stored intact:\n" + "\n".join(
        f"  {k}: {v}" for k, v in sorted(problems.items())) + f"\n{c.logs()}"

    # What the gateway declined at negotiation is no storage SOP class (DICOMDIRs).
    storage = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
    wrongly = {k: v for k, v in context_refused.items() if v.split(" / ")[0] in storage}
    assert not wrongly, f"storage SOP classes refused at negotiation: {wrongly}"
    # What pynetdicom could not send at all is not a DICOM Part 10 file.
    for name, why in unsendable.items():
        path = root / name
        if path.is_file():
            with pytest.raises(InvalidDicomError):
                dcmread(path)
        else:
            assert path.is_dir(), f"{name}: {why}"
    assert len(stored) >= 100, f"only {len(stored)} files stored: {sorted(stored)}"
    assert refused, "no malformed file was refused"

    # The gateway keeps serving: echo, and a known-good file still stores.
    assert _echo(c) == 0x0000
    good = Path(get_testdata_file("CT_small.dcm"))
    assoc = _associate(c, [(CTImageStorage, ExplicitVRLittleEndian)])
    try:
        rsp = assoc.send_c_store(good)
    finally:
        if assoc.is_established:
            assoc.release()
    assert "Status" in rsp and int(rsp.Status) == 0x0000, rsp
    with c.orthanc() as client:
        orthanc_id = wait_until(lambda: client.find_instance(_sop_uid(good)), 30,
                                "the known-good file in Orthanc")
        ok, why = same_dataset(good.read_bytes(), client.instance_file(orthanc_id))
        assert ok, why
    wait_until(lambda: not c.spool_files(), 30, "the spool drained")
