"""The DICOM channel of a delivery: C-STORE of the outputs and the Storage Commitment
request, on one association to the site's SCP.

Storage commitment: after every C-STORE succeeded, the N-ACTION (Push Model, action type 1)
goes on the same association, which then stays open for ``RDC_DELIVERY_COMMIT_WAIT_S``
(default 10 s) for an N-EVENT-REPORT.  A report that arrives there moves the delivery to
``committed`` (or, if the site lists failed instances, back to ``failed`` for another
attempt).  If none arrives, the delivery stays ``sent`` with its ``commitment_uid``
recorded: many PACS send the report later on an association of their own, to the center's
commitment SCP (:mod:`delivery.commitment_scp`), which applies it then.

This module knows no database: it takes Part 10 bytes and returns what the site answered,
or raises :class:`~delivery.errors.DeliveryFailed` with the precise reason.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from io import BytesIO
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ABORT, A_ASSOCIATE, A_P_ABORT
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from core.tls import probe_handshake
from delivery.commitment import evaluate_commitment
from delivery.errors import DeliveryFailed

# Network timeouts (seconds).  Explicit, so a site that accepts TCP and then says
# nothing costs one bounded attempt instead of a worker.
CONNECT_TIMEOUT_S = 10.0
ACSE_TIMEOUT_S = 15.0
DIMSE_TIMEOUT_S = 30.0
NETWORK_TIMEOUT_S = 30.0

STORAGE_COMMITMENT_PUSH = UID("1.2.840.10008.1.20.1")
STORAGE_COMMITMENT_INSTANCE = UID("1.2.840.10008.1.20.1.1")
TRANSFER_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def _now() -> datetime:
    return datetime.now(UTC)



# DICOM ----------------------------------------------------------------------------------
@dataclass
class DicomResult:
    """What the site answered to one association that stored every object."""

    statuses: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> "0x0000"
    warnings: list[str] = field(default_factory=list)
    commitment_uid: str | None = None
    commitment_error: str | None = None
    commitment_report: tuple[bool, str] | None = None


class _Watch:
    """Collects what pynetdicom only logs: the peer's ACSE answer and commitment reports."""

    def __init__(self) -> None:
        self.connected = False
        self.acse: Any = None
        self.reports: dict[str, tuple[int | None, Dataset]] = {}
        self.report_arrived = threading.Event()

    def handlers(self) -> list[Any]:
        return [(evt.EVT_CONN_OPEN, self._on_open), (evt.EVT_ACSE_RECV, self._on_acse),
                (evt.EVT_N_EVENT_REPORT, self._on_event_report)]

    def _on_open(self, event: evt.Event) -> None:
        self.connected = True

    def _on_acse(self, event: evt.Event) -> None:
        self.acse = event.primitive  # type: ignore[attr-defined]

    def _on_event_report(self, event: evt.Event) -> tuple[int, Dataset | None]:
        info = event.event_information
        uid = str(info.get("TransactionUID", ""))
        self.reports[uid] = (event.event_type, info)
        self.report_arrived.set()
        return 0x0000, None

    def peer_ended(self, assoc: Association | None = None) -> str:
        """Why the association ended without an answer, as far as the peer said.

        A peer's A-ABORT reaches us only when the association's reactor, paused while we
        waited for a response, gets to read it; give it a moment to.
        """
        deadline = time.monotonic() + 2.0
        while (assoc is not None and assoc.is_established
               and not isinstance(self.acse, (A_ABORT, A_P_ABORT))
               and time.monotonic() < deadline):
            time.sleep(0.02)
        prim = self.acse
        if isinstance(prim, A_ABORT):
            source = {0: "service user", 2: "service provider"}.get(prim.abort_source or 0,
                                                                  str(prim.abort_source))
            return f"the site aborted the association (A-ABORT, source: {source})"
        if isinstance(prim, A_P_ABORT):
            return f"the connection was aborted (A-P-ABORT, reason {prim.provider_reason})"
        return (f"no answer within the DIMSE timeout ({DIMSE_TIMEOUT_S:g} s) "
                "or the connection closed")


def _probe(host: str, port: int) -> str:
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return "the connection failed, but the port accepts connections now"
    except OSError as e:
        return str(e) or type(e).__name__


def _not_established(assoc: Association, watch: _Watch, host: str, port: int,
                     called_ae: str, tls: ssl.SSLContext | None = None) -> str:
    where = f"{called_ae}@{host}:{port}"
    if not watch.connected:
        if tls is not None:
            why = probe_handshake(host, port, tls, timeout_s=CONNECT_TIMEOUT_S)
            if why is not None:
                return f"cannot connect to {where} over TLS: {why}"
        return f"cannot connect to {where}: {_probe(host, port)}"
    prim = watch.acse
    if assoc.is_rejected and isinstance(prim, A_ASSOCIATE):
        return (f"association rejected by {where}: {prim.result_str}; source: "
                f"{prim.source_str}; reason: {prim.reason_str}")
    if assoc.rejected_contexts and not assoc.accepted_contexts:
        refused = ", ".join(sorted({str(cx.abstract_syntax) for cx in assoc.rejected_contexts}))
        return f"{where} accepted none of the proposed presentation contexts ({refused})"
    if prim is None:
        return f"{where} did not answer the association request within {ACSE_TIMEOUT_S:g} s"
    return f"association with {where} failed: {watch.peer_ended()}"


def _parse(data: bytes) -> Dataset:
    try:
        ds = dcmread(BytesIO(data))
    except (InvalidDicomError, EOFError, ValueError) as e:
        raise DeliveryFailed(f"an output read from Orthanc is not DICOM: {e}") from e
    for keyword in ("SOPClassUID", "SOPInstanceUID"):
        if keyword not in ds:
            raise DeliveryFailed(f"an output read from Orthanc has no {keyword}")
    return ds


def send_dicom(files: Sequence[bytes], *, host: str, port: int, called_ae: str,
               calling_ae: str, commitment: bool, commit_wait_s: float = 10.0,
               tls: ssl.SSLContext | None = None) -> DicomResult:
    """C-STORE ``files`` (Part 10 bytes) to ``called_ae@host:port`` on one association.

    Each object's SOP class is proposed with its own transfer syntax, then Explicit and
    Implicit VR Little Endian.  Success means every C-STORE answered 0x0000 or a warning
    (0xB000-0xBFFF); anything else raises :class:`DeliveryFailed` with the reason.  With
    ``commitment`` a Storage Commitment N-ACTION follows on the same association, which
    stays open up to ``commit_wait_s`` for the site's N-EVENT-REPORT.  With ``tls`` the
    association runs over TLS with that client context (:mod:`core.tls`), the
    peer's certificate checked for ``host``.
    """
    datasets = [_parse(data) for data in files]
    ae = AE(ae_title=calling_ae)
    ae.connection_timeout = CONNECT_TIMEOUT_S
    ae.acse_timeout = ACSE_TIMEOUT_S
    ae.dimse_timeout = DIMSE_TIMEOUT_S
    ae.network_timeout = NETWORK_TIMEOUT_S
    syntaxes: dict[str, list[str]] = {}
    for ds in datasets:
        own = str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
        proposed = syntaxes.setdefault(str(ds.SOPClassUID), [])
        for ts in (own, *TRANSFER_SYNTAXES):
            if ts not in proposed:
                proposed.append(ts)
    for sop_class, tss in syntaxes.items():
        ae.add_requested_context(sop_class, tss)
    if commitment:
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH, list(TRANSFER_SYNTAXES))
    watch = _Watch()
    try:
        assoc = ae.associate(host, port, ae_title=called_ae, evt_handlers=watch.handlers(),
                             tls_args=(tls, host) if tls is not None else None)
    except OSError as e:  # the host name does not resolve
        raise DeliveryFailed(f"cannot connect to {called_ae}@{host}:{port}: {e}") from e
    if not assoc.is_established:
        raise DeliveryFailed(_not_established(assoc, watch, host, port, called_ae, tls))
    result = DicomResult()
    try:
        for ds in datasets:
            _store(assoc, ds, watch, result, called_ae)
        if commitment:
            _request_commitment(assoc, datasets, watch, result, commit_wait_s)
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()
    return result


def _store(assoc: Association, ds: Dataset, watch: _Watch, result: DicomResult,
           called_ae: str) -> None:
    sop_class, sop_uid = UID(str(ds.SOPClassUID)), str(ds.SOPInstanceUID)
    if not any(cx.abstract_syntax == sop_class for cx in assoc.accepted_contexts):
        raise DeliveryFailed(f"{called_ae} did not accept a presentation context for "
                             f"{sop_class.name} ({sop_class}), needed for {sop_uid}")
    try:
        status = assoc.send_c_store(ds)
    except (ValueError, AttributeError, RuntimeError) as e:
        raise DeliveryFailed(f"could not send {sop_uid}: {e}") from e
    if "Status" not in status:
        raise DeliveryFailed(f"no C-STORE response for {sop_uid} ({sop_class.name}): "
                             f"{watch.peer_ended(assoc)}")
    code = int(status.Status)
    result.statuses[sop_uid] = f"0x{code:04X}"
    if code == 0x0000:
        return
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(code, ("", "unknown status"))[1]
    comment = f" - {status.ErrorComment}" if "ErrorComment" in status else ""
    if 0xB000 <= code <= 0xBFFF:
        result.warnings.append(f"{sop_uid}: 0x{code:04X} {meaning}{comment}")
        return
    raise DeliveryFailed(f"C-STORE of {sop_uid} ({sop_class.name}) refused by {called_ae} "
                         f"with status 0x{code:04X} ({meaning}){comment}")


def _request_commitment(assoc: Association, datasets: Sequence[Dataset], watch: _Watch,
                        result: DicomResult, wait_s: float) -> None:
    if not any(cx.abstract_syntax == STORAGE_COMMITMENT_PUSH for cx in assoc.accepted_contexts):
        result.commitment_error = ("storage commitment not requested: the site did not "
                                   "accept the Storage Commitment Push Model context")
        return
    transaction_uid = str(generate_uid())
    request = Dataset()
    request.TransactionUID = transaction_uid
    refs = []
    for ds in datasets:
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        refs.append(item)
    request.ReferencedSOPSequence = refs
    status, _reply = assoc.send_n_action(request, 1, STORAGE_COMMITMENT_PUSH,
                                         STORAGE_COMMITMENT_INSTANCE)
    if "Status" not in status:
        result.commitment_error = ("storage commitment not requested: no N-ACTION response "
                                   f"({watch.peer_ended(assoc)})")
        return
    code = int(status.Status)
    if code != 0x0000:
        result.commitment_error = ("storage commitment not requested: N-ACTION refused with "
                                   f"status 0x{code:04X}")
        return
    result.commitment_uid = transaction_uid
    expected = [str(ds.SOPInstanceUID) for ds in datasets]
    deadline = _now() + timedelta(seconds=wait_s)
    while transaction_uid not in watch.reports and assoc.is_established:
        left = (deadline - _now()).total_seconds()
        if left <= 0:
            break
        watch.report_arrived.wait(min(left, 0.5))
        watch.report_arrived.clear()
    if transaction_uid in watch.reports:
        event_type, info = watch.reports[transaction_uid]
        result.commitment_report = evaluate_commitment(event_type, info, expected)
