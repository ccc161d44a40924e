"""Who may open a DICOM association with the center: one decision for every listener.

The gateway's C-STORE SCP and the delivery service's storage commitment SCP both take
associations from county sites, and both must answer a stranger the same way: the called
AE title must be the center's, the calling AE title and the peer's address must belong to
one enabled site, and that site may be held to a transport (the mutual-TLS port).  A
database that cannot be read is a transient refusal, so a site retries rather than
giving up.  Keeping the rule in one place means a fix to it reaches every port.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pynetdicom import evt
from pynetdicom.association import Association

from core.db import Database
from core.models import Site
from core.sites import find_sender

log = logging.getLogger(__name__)

#: A-ASSOCIATE-RJ (result, source, reason), PS3.8 9.3.4: permanent, service user.
REJECT_CALLING_AE = (0x01, 0x01, 0x03)
REJECT_CALLED_AE = (0x01, 0x01, 0x07)
#: Transient, service provider (presentation related): the site may try again.
REJECT_TRANSIENT = (0x02, 0x03, 0x01)


@dataclass(frozen=True)
class Admission:
    """The decision on one A-ASSOCIATE-RQ: ``site_id`` when admitted, else ``reject``."""

    calling_ae: str
    called_ae: str
    peer: str
    site_id: str | None = None
    reject: tuple[int, int, int] | None = None
    reason: str = ""


def admit(db: Database, center_ae: str, assoc: Association,
          transport: Callable[[Site], str | None], *, log_name: str) -> Admission:
    """Decide on ``assoc``'s request.  ``transport(site)`` returns why the site may not
    use this listener (for example a site held to DICOM TLS on the plain port), or None."""
    rq = assoc.requestor.primitive
    assert rq is not None  # EVT_REQUESTED fires only after an A-ASSOCIATE-RQ
    calling = str(rq.calling_ae_title).strip()
    called = str(rq.called_ae_title).strip()
    peer = str(assoc.requestor.address)

    def refuse(reject: tuple[int, int, int], reason: str) -> Admission:
        return Admission(calling, called, peer, reject=reject, reason=reason)

    if called != center_ae:
        return refuse(REJECT_CALLED_AE, "called AE title not recognised")
    try:
        with db.session() as s:
            site = find_sender(s, calling, peer)
            if site is None:
                return refuse(REJECT_CALLING_AE, "calling AE title / address not registered")
            refusal = transport(site)
            site_id = site.id
    except Exception:
        log.exception("%s.site_lookup_failed", log_name)
        return refuse(REJECT_TRANSIENT, "center temporarily unavailable")
    if refusal is not None:
        return refuse(REJECT_CALLING_AE, refusal)
    return Admission(calling, called, peer, site_id=site_id)


def send_reject(assoc: Association, reject: tuple[int, int, int]) -> None:
    """Answer A-ASSOCIATE-RJ from an EVT_REQUESTED handler and close.

    As pynetdicom's own reject path: kill() waits for the DUL to send the A-ASSOCIATE-RJ,
    otherwise the socket closes first and the peer only sees a dropped connection
    instead of the reason.
    """
    assoc.acse.send_reject(*reject)
    assoc.is_rejected = True
    evt.trigger(assoc, evt.EVT_REJECTED, {})
    assoc.kill()
