"""The C-ECHO / C-STORE SCP that county sites send to.

Handlers are adapters: check who is calling, make the encoded bytes durable
(spool file + receipt row), answer.  Upload, completeness and routing happen
elsewhere.  Every handler is wrapped so that an unexpected error becomes a
defined failure status and a log line, and the gateway keeps serving.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import (
    AllTransferSyntaxes,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)
from pynetdicom import AE, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from core import audit, metrics
from core.db import Database
from core.dicom_admission import admit, send_reject
from core.group_commit import GroupCommitter
from core.log_context import log_context
from core.settings import Settings
from pacs_gateway.admission import FrontDoor
from pacs_gateway.connection import GatewayAssociation, GatewayServer
from pacs_gateway.inspect import (
    STATUS_SOP_CLASS_MISMATCH,
    InvalidDataset,
    inspect_encoded,
)
from pacs_gateway.receipts import record_receipt
from pacs_gateway.receive_limits import ReceiveLimiter, ReceiveLimits, received_dataset
from pacs_gateway.spool import Spool, SpoolFull
from pacs_gateway.tls import TLSAcceptor, transport_refusal
from pacs_gateway.uploader import Receipt

log = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
PRIORITY_HIGH = 0x0001  # C-STORE-RQ Priority (PS3.7 9.1.1.1.7): 0 medium, 1 high, 2 low
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_PROCESSING_FAILURE = 0x0110


@dataclass
class _AssocState:
    site_id: str
    calling_ae: str
    peer: str
    stored: int = 0
    refused: int = 0
    refusals: dict[str, int] = field(default_factory=dict)


def _failure(status: int, comment: str) -> Dataset:
    ds = Dataset()
    ds.Status = status
    # ErrorComment is LO: 64 characters at most.
    ds.ErrorComment = comment.replace("\\", "/")[:64]
    return ds


def port_is_free(host: str, port: int) -> bool:
    """True when nothing (not even another SO_REUSEPORT gateway) listens on ``port``."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # SO_REUSEADDR: connections of an earlier run in TIME_WAIT do not count,
        # a listening socket (with or without SO_REUSEPORT) still does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


#: Encapsulated (or deflated) syntaxes that keep every pixel value exactly.
LOSSLESS_ENCAPSULATED = (
    DeflatedExplicitVRLittleEndian,
    "1.2.840.10008.1.2.4.70",   # JPEG Lossless, first-order prediction (SV1)
    "1.2.840.10008.1.2.4.57",   # JPEG Lossless, process 14
    "1.2.840.10008.1.2.4.80",   # JPEG-LS lossless
    "1.2.840.10008.1.2.4.90",   # JPEG 2000 (lossless only)
    "1.2.840.10008.1.2.4.92",   # JPEG 2000 Part 2 multi-component (lossless only)
    "1.2.840.10008.1.2.4.201",  # HTJ2K (lossless only)
    "1.2.840.10008.1.2.4.202",  # HTJ2K RPCL (lossless only)
    "1.2.840.10008.1.2.5",      # RLE lossless
)


def preferred_transfer_syntaxes() -> list[str]:
    """Every transfer syntax, in the order the gateway prefers them.

    pynetdicom's acceptor takes, for each proposed presentation context, the first
    syntax of *this* list that the context also offers (``negotiate_as_acceptor``
    walks the acceptor's syntaxes in order).  The order therefore decides what a
    sender that offers several syntaxes in one context has to send, and it prefers
    what keeps the object bit-exact: Explicit VR Little Endian first, then lossless
    encapsulated syntaxes, then the other uncompressed ones, and a lossy (or
    possibly lossy) syntax only when the context offers nothing else.  A sender
    whose file is already lossy-compressed proposes that syntax in a context of its
    own (DCMTK's storescu does unless told ``--combine``), and that context is
    accepted with it, so the file is still stored as encoded.
    """
    first = [ExplicitVRLittleEndian, *LOSSLESS_ENCAPSULATED, ExplicitVRBigEndian,
             ImplicitVRLittleEndian]
    rest = [uid for uid in AllTransferSyntaxes if uid not in first]
    return [*first, *rest]


class GatewaySCP:
    """Owns the pynetdicom AE and the handler bindings."""

    def __init__(self, settings: Settings, db: Database, spool: Spool,
                 committer: GroupCommitter,
                 on_spooled: Callable[[str, Receipt], None] | None = None) -> None:
        self.settings = settings
        self.db = db
        self.spool = spool
        #: Receipts are committed in groups across concurrent associations.
        self.committer = committer
        #: Called with the receipt ID and its :class:`Receipt` after each durable
        #: receipt (hands it to the uploader).
        self.on_spooled = on_spooled
        self._assocs: dict[int, _AssocState] = {}
        self._lock = threading.Lock()
        self.server: ThreadedAssociationServer | None = None
        #: Set when this SCP serves the mutual-TLS port (pacs_gateway.tls).
        self.tls: TLSAcceptor | None = None
        #: Admission, read/idle deadlines and the refusal audit (per process and SCP).
        self.front_door = FrontDoor.from_settings(settings, db)

    # Set-up ---------------------------------------------------------------
    def _make_ae(self) -> AE:
        ae = AE(ae_title=self.settings.gateway_ae)
        ae.require_called_aet = True
        # The front door's admission is the real limit (registered and unregistered
        # pools, per address); pynetdicom's own count also holds threads that are
        # finishing, so it only backs that up.
        ae.maximum_associations = 2 * self.front_door.admission.limits.total + 8
        # Announced in A-ASSOCIATE-AC; what a PDU may declare is capped separately
        # (pacs_gateway.receive_limits, installed in start()).
        ae.maximum_pdu_size = ReceiveLimits.from_settings(self.settings).pdu_size
        # The A-ASSOCIATE-RQ deadline (ARTIM) and the idle limit of an association;
        # pacs_gateway.connection enforces both on every read.
        ae.acse_timeout = self.settings.gateway_associate_timeout_s
        ae.dimse_timeout = 120
        ae.network_timeout = self.settings.gateway_idle_timeout_s
        ts = preferred_transfer_syntaxes()
        ae.add_supported_context(Verification, ts)
        for cx in AllStoragePresentationContexts:
            assert cx.abstract_syntax is not None
            ae.add_supported_context(cx.abstract_syntax, ts)
        return ae

    def start(self, reuse_port: bool = False, *, port: int | None = None,
              tls: TLSAcceptor | None = None) -> ThreadedAssociationServer:
        """Listen.  With ``reuse_port`` several gateway processes share the port and
        the kernel spreads associations over them (pynetdicom is bound by the GIL).
        ``port`` defaults to ``RDC_GATEWAY_PORT``; with ``tls`` the port accepts mutual
        TLS only and each association must come from its certificate's site."""
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._on_conn_open),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_ACCEPTED, self._on_accepted),
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
        ]
        # PDU and dataset size limits; datasets are received into the spool's tmp/.
        handlers += ReceiveLimiter(ReceiveLimits.from_settings(self.settings),
                                   self.spool.tmp).handlers()
        ae = self._make_ae()
        self.tls = tls
        port = self.settings.gateway_port if port is None else port
        address = (self.settings.gateway_host, port)
        server_class: type[ThreadedAssociationServer] = GatewayServer
        if tls is not None:
            server_class = tls.server_class(server_class)
        self.front_door.start()
        server = ae.make_server(address, evt_handlers=handlers, server_class=server_class,
                                gate=self.front_door, reuse_port=reuse_port)
        thread = threading.Thread(target=server.serve_forever, name="gateway-acceptor",
                                  daemon=True)
        thread.start()
        # What ae.start_server() does too: the server's shutdown() expects it.
        ae._servers.append(server)
        self.server = server
        log.info("gateway.listening ae=%s port=%s tls=%s", self.settings.gateway_ae, port,
                 tls is not None)
        return server

    def stop(self) -> None:
        """Stop listening and abort associations still open.

        An aborted sender gets no acknowledgement for what it has not been told is
        stored, so it sends again later; what was acknowledged is already durable.
        Aborting also ends pynetdicom's non-daemon DUL threads, which would otherwise
        keep the process alive until the peer's own timeout.
        """
        self.front_door.stopping = True
        if self.server is not None:
            server, self.server = self.server, None
            server.shutdown()
            for assoc in list(server.active_associations):
                try:
                    assoc.abort()
                except Exception:  # pragma: no cover - best effort on the way out
                    log.debug("gateway.abort_failed", exc_info=True)
        # The refusal windows still open are written as their summaries now.
        self.front_door.stop()

    # Handlers -------------------------------------------------------------
    def _on_conn_open(self, event: evt.Event) -> None:
        try:
            assoc_sock = event.assoc.dul.socket
            sock = assoc_sock.socket if assoc_sock is not None else None
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except Exception:  # pragma: no cover - best effort
            log.debug("gateway.nodelay_failed", exc_info=True)

    def _audit(self, action: str, object_id: str, detail: dict[str, Any],
               actor: str = "gateway") -> None:
        try:
            with self.db.session() as s:
                audit.append(s, actor=actor, action=action, object_type="association",
                             object_id=object_id, detail=detail)
        except Exception:
            log.exception("gateway.audit_failed action=%s", action)

    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        decision = admit(self.db, self.settings.gateway_ae, assoc,
                         lambda site: transport_refusal(assoc, site, tls=self.tls is not None),
                         log_name="gateway")
        calling, called, peer = decision.calling_ae, decision.called_ae, decision.peer
        if decision.site_id is not None:
            with self._lock:
                self._assocs[id(assoc)] = _AssocState(decision.site_id, calling, peer)
            metrics.GATEWAY_ASSOCIATIONS.labels(site=decision.site_id, outcome="accepted").inc()
            return
        metrics.GATEWAY_ASSOCIATIONS.labels(site="unknown", outcome="rejected").inc()
        assert decision.reject is not None
        log.warning("gateway.association_rejected reason=%r calling=%s called=%s peer=%s",
                    decision.reason, calling, called, peer)
        # Aggregated per peer and window (pacs_gateway.refusal_audit): a stranger
        # retrying in a loop costs a bounded number of audit rows.
        self.front_door.auditor.refuse(
            peer, category="association", kind="rejected", action="association.reject",
            object_id=f"{calling}@{peer}", calling_ae=calling,
            detail={"calling_ae": calling, "called_ae": called, "peer": peer,
                    "reason": decision.reason, "rsd": list(decision.reject)})
        send_reject(assoc, decision.reject)

    def _on_accepted(self, event: evt.Event) -> None:
        state = self._assocs.get(id(event.assoc))
        if state is None:
            return
        refused = sorted({str(cx.abstract_syntax) for cx in event.assoc.rejected_contexts})
        detail: dict[str, Any] = {"calling_ae": state.calling_ae, "peer": state.peer}
        if refused:
            detail["refused_sop_classes"] = refused
            log.warning("gateway.contexts_refused site=%s sop_classes=%s", state.site_id, refused)
        self._audit("association.accept", state.site_id, detail, actor=f"site:{state.site_id}")

    def _on_echo(self, event: evt.Event) -> int:
        return STATUS_SUCCESS

    def _on_store(self, event: evt.Event) -> int | Dataset:
        state = self._assocs.get(id(event.assoc))
        if state is None:  # cannot happen: unknown senders never get an association
            return _failure(STATUS_PROCESSING_FAILURE, "association not authorised")
        with log_context(site_id=state.site_id):
            try:
                answer = self._store(event, state)
            except Exception as e:  # safety net: a defined failure and a log line
                log.exception("gateway.store_crashed site=%s", state.site_id)
                state.refused += 1
                answer = _failure(STATUS_PROCESSING_FAILURE,
                                  f"internal error: {type(e).__name__}")
        status = answer if isinstance(answer, int) else int(answer.Status)
        metrics.GATEWAY_CSTORE.labels(site=state.site_id,
                                      status=metrics.dicom_status(status)).inc()
        return answer

    def _store(self, event: evt.Event, state: _AssocState) -> int | Dataset:
        # A file in the spool's tmp/, written as it arrived; inspected from disk and
        # taken by a rename (pynetdicom deletes it after this handler if not taken).
        received = received_dataset(event)
        try:
            info = inspect_encoded(received.source,
                                   ReceiveLimits.from_settings(self.settings).inflate)
            if info.sop_class_uid != str(event.context.abstract_syntax):
                raise InvalidDataset(STATUS_SOP_CLASS_MISMATCH,
                                     "SOP Class UID does not match the presentation context")
            requested = str(getattr(event.request, "AffectedSOPInstanceUID", "") or "")
            if requested and requested != info.sop_instance_uid:
                raise InvalidDataset(STATUS_SOP_CLASS_MISMATCH,
                                     "SOP Instance UID differs from the C-STORE request")
        except InvalidDataset as e:
            state.refused += 1
            key = f"0x{e.status:04X}"
            state.refusals[key] = state.refusals.get(key, 0) + 1
            log.warning("gateway.store_refused site=%s status=%s reason=%s", state.site_id, key, e)
            return _failure(e.status, str(e))
        try:
            receipt_id = self.spool.take(received.source)
        except SpoolFull as e:
            state.refused += 1
            log.error("gateway.spool_full site=%s %s", state.site_id, e)
            return _failure(STATUS_OUT_OF_RESOURCES, f"out of resources: {e}")
        except OSError as e:
            state.refused += 1
            log.exception("gateway.spool_write_failed site=%s", state.site_id)
            return _failure(STATUS_OUT_OF_RESOURCES, f"cannot write spool: {e.strerror}")
        try:
            study_id = self.committer.run(partial(
                record_receipt, receipt_id=receipt_id, site_id=state.site_id, info=info,
                size=received.size, calling_ae=state.calling_ae, peer_address=state.peer,
                urgent=getattr(event.request, "Priority", 0) == PRIORITY_HIGH))
        except Exception:
            # No receipt: the sender will hear a failure, so the file must go too.
            self.spool.remove(receipt_id)
            raise
        state.stored += 1
        if self.on_spooled is not None:
            self.on_spooled(receipt_id, Receipt(state.site_id, study_id, info.sop_instance_uid))
        return STATUS_SUCCESS

    def _on_closed(self, event: evt.Event) -> None:
        with self._lock:
            state = self._assocs.pop(id(event.assoc), None)
        if state is None:
            return
        how = "release" if event.event is evt.EVT_RELEASED else "abort"
        detail: dict[str, Any] = {"calling_ae": state.calling_ae, "peer": state.peer,
                                  "stored": state.stored, "refused": state.refused,
                                  "refusals": state.refusals}
        assoc = event.assoc
        if isinstance(assoc, GatewayAssociation) and assoc.close_reason:
            detail["reason"] = assoc.close_reason  # e.g. aborted by the idle limit
        self._audit(f"association.{how}", state.site_id, detail, actor=f"site:{state.site_id}")

