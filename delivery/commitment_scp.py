"""The center's Storage Commitment SCP: reports that a site sends on an association of its own.

A delivery's N-ACTION asks the site to commit the SR and PDF (:mod:`delivery.dicom_scu`)
and keeps the association open for ``RDC_DELIVERY_COMMIT_WAIT_S`` for the answer.  Many
PACS answer later instead: they release, and minutes afterwards open a new association
to the requester and send the N-EVENT-REPORT there (PS3.4 J.3.3, with SCP/SCU role
selection: the site is the Storage Commitment SCP although it requests the association).
Until that report arrives the delivery stays ``sent`` with its ``commitment_uid``
("awaiting commitment").  This process listens for those associations, on its own port
(``RDC_COMMITMENT_PORT``, by default the gateway's port + 2) under the center's AE title,
run by ``rdc commitment`` and as a child of ``rdc up``.

Why a process of its own, not a context of the gateway's SCP: the gateway is the inbound
package and must not import the outbound one (its front door, spool and admission limits
are for studies); and a report must be applied even while the gateway is stopped, just as
retries go on then.

Who may report: only a registered, enabled site, found by calling AE title and peer
address as the gateway finds a sender (:func:`core.sites.find_sender`), and only on its
own deliveries.  Anything else is refused: a stranger's association with an
A-ASSOCIATE-RJ (audited, at most once per peer and :data:`REFUSAL_AUDIT_WINDOW_S`, so a
stranger in a loop costs a bounded number of audit rows), and a report of a transaction
the center does not know, or of another site's delivery, with status 0x0115 (invalid
argument value) and an audit record.  A site that holds a TLS certificate must use TLS,
which this port does not offer yet, so it is refused as on the gateway's plain port.

A report may overtake the worker: a fast PACS can open its second association before the
worker has recorded the attempt as ``sent``.  A report of a transaction that is not yet
known therefore waits, up to the commit wait plus :data:`RECORD_GRACE_S`, for the
delivery to be recorded, before it is answered as unknown.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer
from sqlalchemy import select

from core import audit
from core.db import Database
from core.dicom_admission import admit, send_reject
from core.models import Delivery, Site
from core.settings import Settings
from core.states import DeliveryState
from delivery.commitment import apply_commitment_report
from delivery.dicom_scu import (
    ACSE_TIMEOUT_S,
    DIMSE_TIMEOUT_S,
    NETWORK_TIMEOUT_S,
    STORAGE_COMMITMENT_PUSH,
    TRANSFER_SYNTAXES,
)

log = logging.getLogger(__name__)

#: N-EVENT-REPORT statuses (PS3.7 10.1.1.1.8).
STATUS_SUCCESS = 0x0000
STATUS_PROCESSING_FAILURE = 0x0110  # ours (the database): the site may send it again
STATUS_NO_SUCH_EVENT_TYPE = 0x0113
STATUS_INVALID_ARGUMENT_VALUE = 0x0115  # a transaction UID that is not the site's

#: A refused peer is audited at most once in this many seconds (the rest are logged).
REFUSAL_AUDIT_WINDOW_S = 60.0
#: Seconds beyond the commit wait that a report of a not yet recorded transaction waits.
RECORD_GRACE_S = 5.0


def _plain_port_only(site: Site) -> str | None:
    """The commitment port offers no DICOM TLS, so a site held to TLS is refused here as
    on the gateway's plain port."""
    if site.tls_required:
        return (f"site {site.id!r} holds a TLS certificate and must use DICOM TLS, "
                "which the commitment port does not offer")
    return None

class CommitmentSCP:
    """Accepts Storage Commitment N-EVENT-REPORTs from registered sites and applies them."""

    def __init__(self, settings: Settings, db: Database, *, host: str | None = None,
                 port: int | None = None) -> None:
        listen = port if port is not None else settings.commitment_listen_port
        if listen is None:
            raise ValueError("the storage commitment SCP is off (RDC_COMMITMENT_PORT=0)")
        self.settings, self.db = settings, db
        self.host = host if host is not None else settings.gateway_host
        self.port = listen
        self.record_wait_s = settings.delivery_commit_wait_s + RECORD_GRACE_S
        self._sites: dict[int, str] = {}  # id(association) -> the reporting site
        self._refusals_audited: dict[str, float] = {}  # peer -> when last audited
        self._lock = threading.Lock()
        self._server: ThreadedAssociationServer | None = None
        self.ae = AE(ae_title=settings.gateway_ae)
        self.ae.acse_timeout = ACSE_TIMEOUT_S
        self.ae.dimse_timeout = DIMSE_TIMEOUT_S
        self.ae.network_timeout = NETWORK_TIMEOUT_S
        # The requestor is the Storage Commitment SCP here: accept its SCP role when it
        # proposes role selection (and the default roles when it proposes none).
        self.ae.add_supported_context(STORAGE_COMMITMENT_PUSH, list(TRANSFER_SYNTAXES),
                                      scu_role=False, scp_role=True)

    def start(self) -> None:
        """Listen (in the background); raises :class:`OSError` if the port is taken."""
        self._server = self.ae.start_server(
            (self.host, self.port), block=False, evt_handlers=[
                (evt.EVT_REQUESTED, self._on_requested),
                (evt.EVT_N_EVENT_REPORT, self._on_event_report),
                (evt.EVT_CONN_CLOSE, self._on_closed)])
        log.info("commitment.listening ae=%s port=%s", self.settings.gateway_ae, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # Associations ---------------------------------------------------------------------
    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        decision = admit(self.db, self.settings.gateway_ae, assoc, _plain_port_only,
                         log_name="commitment")
        if decision.site_id is not None:
            with self._lock:
                self._sites[id(assoc)] = decision.site_id
            return
        assert decision.reject is not None
        log.warning("commitment.association_rejected reason=%r calling=%s called=%s peer=%s",
                    decision.reason, decision.calling_ae, decision.called_ae, decision.peer)
        self._audit_refusal(decision.peer, decision.calling_ae, decision.called_ae,
                            decision.reason, decision.reject)
        send_reject(assoc, decision.reject)

    def _audit_refusal(self, peer: str, calling: str, called: str, reason: str,
                       reject: tuple[int, int, int]) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._refusals_audited.get(peer)
            if last is not None and now - last < REFUSAL_AUDIT_WINDOW_S:
                return
            self._refusals_audited[peer] = now
        try:
            with self.db.session() as s:
                audit.append(s, actor="commitment", action="commitment.association_reject",
                             object_type="association", object_id=f"{calling}@{peer}",
                             detail={"calling_ae": calling, "called_ae": called,
                                     "peer": peer, "reason": reason, "rsd": list(reject),
                                     "port": self.port})
        except Exception:
            log.exception("commitment.audit_failed peer=%s", peer)

    def _on_closed(self, event: evt.Event) -> None:
        with self._lock:
            self._sites.pop(id(event.assoc), None)

    # Reports --------------------------------------------------------------------------
    def _on_event_report(self, event: evt.Event) -> tuple[int, Dataset | None]:
        with self._lock:
            site_id = self._sites.get(id(event.assoc))
        if site_id is None:  # not through _on_requested: cannot happen, refuse anyway
            return STATUS_PROCESSING_FAILURE, None
        try:
            info = event.event_information
        except Exception as e:  # an undecodable data set
            log.warning("commitment.bad_report site=%s error=%s", site_id, e)
            return STATUS_PROCESSING_FAILURE, None
        transaction_uid = str(info.get("TransactionUID", ""))
        event_type = event.event_type
        try:
            return self._apply(site_id, transaction_uid, event_type, info), None
        except Exception:
            log.exception("commitment.apply_failed site=%s transaction_uid=%s", site_id,
                          transaction_uid)
            return STATUS_PROCESSING_FAILURE, None

    def _apply(self, site_id: str, transaction_uid: str, event_type: int | None,
               info: Dataset) -> int:
        """Apply one report; returns the N-EVENT-REPORT status for the site."""
        actor = f"site:{site_id}"
        deadline = time.monotonic() + self.record_wait_s
        while True:
            with self.db.session() as s:
                delivery = (s.scalar(select(Delivery).where(
                    Delivery.commitment_uid == transaction_uid)) if transaction_uid else None)
                ours = delivery is not None and delivery.site_id == site_id
                if ours and delivery is not None and delivery.state == DeliveryState.SENT:
                    if event_type not in (1, 2):
                        self._audit_report(s, actor, transaction_uid, delivery, "refused",
                                           f"no such event type {event_type}")
                        return STATUS_NO_SUCH_EVENT_TYPE
                    applied = apply_commitment_report(s, transaction_uid, event_type, info,
                                                      actor=actor)
                    if applied is not None:
                        log.info("commitment.applied site=%s delivery_id=%s state=%s",
                                 site_id, applied.id, applied.state)
                        return STATUS_SUCCESS
                elif ours and delivery is not None:
                    # Settled already (a report on the delivery's own association, a later
                    # attempt, or the site repeating itself): nothing to apply or resend.
                    self._audit_report(s, actor, transaction_uid, delivery, "ignored",
                                       f"delivery is already {delivery.state}")
                    return STATUS_SUCCESS
                elif delivery is not None:
                    break  # another site's delivery: refused below, without waiting
            if time.monotonic() >= deadline:
                break
            time.sleep(0.2)  # the worker may not have recorded the attempt yet
        with self.db.session() as s:
            self._audit_report(s, actor, transaction_uid, None, "refused",
                               "no delivery of this site has this transaction UID")
        log.warning("commitment.unknown_transaction site=%s transaction_uid=%s", site_id,
                    transaction_uid)
        return STATUS_INVALID_ARGUMENT_VALUE

    @staticmethod
    def _audit_report(s: Any, actor: str, transaction_uid: str, delivery: Delivery | None,
                      outcome: str, reason: str) -> None:
        audit.append(s, actor=actor, action=f"delivery.commitment_{outcome}",
                     object_type="delivery",
                     object_id=str(delivery.id) if delivery is not None else transaction_uid,
                     detail={"commitment_uid": transaction_uid, "reason": reason})


def serve(settings: Settings, db: Database, stop: threading.Event) -> None:
    """Run the commitment SCP until ``stop`` is set (``rdc commitment``)."""
    scp = CommitmentSCP(settings, db)
    scp.start()
    try:
        stop.wait()
    finally:
        scp.stop()
