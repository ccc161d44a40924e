"""Connection admission at the DICOM port: who gets a slot, decided at accept().

Before a peer has said anything its address is all the gateway knows, and a slot
(a thread, a socket, an entry in pynetdicom's association count) is what a hostile
peer wants to exhaust.  So the decision is taken in the acceptor thread, from memory
only (never the database: a slow database must not stall accept()), and a refused
connection is closed at once, before any thread exists for it:

* addresses that a registered, enabled site may send from share ``registered``
  slots;
* every other address shares a small separate pool (``unregistered``).  Such a peer
  can never be let in (``find_sender`` checks the address too), it can only be told
  why in an A-ASSOCIATE-RJ, so a few slots are plenty, and they never eat into the
  registered sites' capacity;
* no single address holds more than ``per_address`` connections, so one registered
  site's address (or a hostile device behind the same NAT) cannot crowd out the
  other sites.

The limits are per process.  The gateway can run several processes on one port
(SO_REUSEPORT, pacs_gateway/service.py); each admits up to these limits on its own.

The registered networks come from the sites table, reloaded in the background
(every ``refresh_s``, and soon after an address was not found, so that a site added
a moment ago is recognised within about a second).
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from sqlalchemy import select

from core.db import Database
from core.models import Site
from core.settings import Settings
from pacs_gateway.connection import ConnectionRecord, Timeouts
from pacs_gateway.refusal_audit import RefusalAuditor

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def normalise_address(peer: str) -> IPAddress | None:
    """The peer's IP address; an IPv4-mapped IPv6 address as the IPv4 address."""
    try:
        addr = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def registered_networks(db: Database) -> list[IPNetwork]:
    """Every network an enabled site may send from (unparseable entries skipped)."""
    nets: list[IPNetwork] = []
    with db.session() as s:
        for allowed in s.scalars(select(Site.allowed_addresses).where(Site.enabled.is_(True))):
            for entry in allowed or ():
                try:
                    nets.append(ipaddress.ip_network(str(entry), strict=False))
                except ValueError:
                    log.warning("admission.bad_site_network entry=%r", entry)
    return nets


@dataclass(frozen=True)
class Limits:
    registered: int
    unregistered: int
    per_address: int

    @property
    def total(self) -> int:
        return self.registered + self.unregistered


@dataclass(frozen=True)
class Refusal:
    """Why a connection got no slot (``reason`` is what the audit row says)."""

    peer: str
    registered: bool
    reason: str


class Ticket:
    """One admitted connection's slot; ``release()`` gives it back (idempotent)."""

    def __init__(self, admission: Admission, peer: str, registered: bool) -> None:
        self.peer = peer
        self.registered = registered
        self._admission = admission
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._admission._release(self)


class Admission:
    """Counts connections per pool and per address; thread-safe, never blocks."""

    def __init__(self, limits: Limits, load_networks: Callable[[], Iterable[IPNetwork]],
                 refresh_s: float = 5.0, miss_refresh_s: float = 1.0) -> None:
        self.limits = limits
        self._load = load_networks
        self._refresh_s = refresh_s
        self._miss_refresh_s = miss_refresh_s
        self._networks: tuple[IPNetwork, ...] = ()
        self._lock = threading.Lock()
        self._per_address: dict[str, int] = {}
        self._registered = 0
        self._unregistered = 0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # Registered networks ---------------------------------------------------
    def refresh(self) -> None:
        """Reload the registered networks now (keeps the old list if that fails)."""
        try:
            self._networks = tuple(self._load())
        except Exception:
            log.exception("admission.refresh_failed; keeping %d known networks",
                          len(self._networks))

    def start(self) -> None:
        self.refresh()
        self._thread = threading.Thread(target=self._refresh_loop, name="gateway-admission",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)

    def _refresh_loop(self) -> None:
        while not self._stop.is_set():
            woken = self._wake.wait(self._refresh_s)
            if self._stop.is_set():
                return
            if woken:
                # Soon after a miss, but at most once per ``miss_refresh_s``, however
                # many unknown addresses knock meanwhile.
                self._stop.wait(self._miss_refresh_s)
                self._wake.clear()
            self.refresh()

    def is_registered(self, peer: str) -> bool:
        addr = normalise_address(peer)
        if addr is None:
            return False
        return any(addr.version == net.version and addr in net for net in self._networks)

    # Slots ------------------------------------------------------------------
    def admit(self, peer: str) -> Ticket | Refusal:
        registered = self.is_registered(peer)
        if not registered:
            self._wake.set()  # perhaps a site added a moment ago
        lim = self.limits
        with self._lock:
            held = self._per_address.get(peer, 0)
            if held >= lim.per_address:
                return Refusal(peer, registered,
                               f"per-address limit: {held} connections from this address "
                               f"(limit {lim.per_address})")
            if registered and self._registered >= lim.registered:
                return Refusal(peer, registered,
                               f"local limit exceeded: all {lim.registered} association "
                               "slots in use")
            if not registered and self._unregistered >= lim.unregistered:
                return Refusal(peer, registered,
                               f"local limit exceeded: all {lim.unregistered} slots for "
                               "unregistered addresses in use")
            self._per_address[peer] = held + 1
            if registered:
                self._registered += 1
            else:
                self._unregistered += 1
        return Ticket(self, peer, registered)

    def _release(self, ticket: Ticket) -> None:
        with self._lock:
            held = self._per_address.get(ticket.peer, 0) - 1
            if held > 0:
                self._per_address[ticket.peer] = held
            else:
                self._per_address.pop(ticket.peer, None)
            if ticket.registered:
                self._registered -= 1
            else:
                self._unregistered -= 1

    def in_use(self) -> dict[str, int]:
        """Slots held now (for logs and tests)."""
        with self._lock:
            return {"registered": self._registered, "unregistered": self._unregistered,
                    "addresses": len(self._per_address)}


class FrontDoor:
    """The gateway's :class:`~pacs_gateway.connection.ConnectionGate`: a slot from the
    admission, and every connection refused or ended before an association request
    reported to the refusal audit."""

    def __init__(self, admission: Admission, auditor: RefusalAuditor,
                 timeouts: Timeouts, balancers: Iterable[IPNetwork] = ()) -> None:
        self.admission = admission
        self.auditor = auditor
        self.timeouts = timeouts
        #: Load balancers whose connections begin with a PROXY protocol v2 header.
        self.balancers = tuple(balancers)
        # Connections of a balancer whose header is still being read: as many as the
        # site slots behind it (a stalled balancer cannot hold more threads than that).
        self._header_slots = threading.BoundedSemaphore(
            max(1, admission.limits.total)) if self.balancers else None
        #: Set while the gateway stops: connections it cuts itself are no refusals.
        self.stopping = False
        self._started = False

    @classmethod
    def from_settings(cls, settings: Settings, db: Database) -> FrontDoor:
        limits = Limits(registered=settings.gateway_max_associations,
                        unregistered=settings.gateway_unregistered_connections,
                        per_address=settings.gateway_max_connections_per_address)
        return cls(Admission(limits, lambda: registered_networks(db)),
                   RefusalAuditor(db, settings.gateway_refusal_audit_window_s,
                                  settings.gateway_refusal_audit_burst),
                   Timeouts(associate_s=settings.gateway_associate_timeout_s,
                            idle_s=settings.gateway_idle_timeout_s),
                   balancers=settings.gateway_balancer_networks)

    def start(self) -> None:
        if not self._started:
            self._started = True
            self.admission.start()
            self.auditor.start()

    def stop(self) -> None:
        self.stopping = True
        if self._started:
            self._started = False
            self.admission.stop()
            self.auditor.stop()

    def admit(self, peer: str) -> Ticket | None:
        result = self.admission.admit(peer)
        if isinstance(result, Ticket):
            return result
        self.auditor.refuse(peer, category="connection", kind="capacity",
                            action="connection.refuse", object_id=peer,
                            detail={"peer": peer, "kind": "capacity", "reason": result.reason,
                                    "registered_address": result.registered})
        return None

    # Load balancers (PROXY protocol) ----------------------------------------------
    def from_balancer(self, peer: str) -> bool:
        if not self.balancers:
            return False
        addr = normalise_address(peer)
        return addr is not None and any(
            addr.version == net.version and addr in net for net in self.balancers)

    def admit_balancer(self, peer: str) -> Ticket | None:
        slots = self._header_slots
        if slots is not None and slots.acquire(blocking=False):
            return _HeaderSlot(slots)
        reason = "local limit exceeded: every slot for a balancer's PROXY header in use"
        self.auditor.refuse(peer, category="connection", kind="capacity",
                            action="connection.refuse", object_id=peer,
                            detail={"peer": peer, "kind": "capacity", "reason": reason,
                                    "registered_address": False})
        return None

    def proxy_refused(self, peer: str, reason: str) -> None:
        if self.stopping:
            return
        self.auditor.refuse(peer, category="connection", kind="proxy-header",
                            action="connection.refuse", object_id=peer,
                            detail={"peer": peer, "kind": "proxy-header", "reason": reason})

    def closed(self, record: ConnectionRecord) -> None:
        if self.stopping:
            return
        refusal = record.refusal()
        if refusal is None:
            return
        kind, reason = refusal
        self.auditor.refuse(record.peer, category="connection", kind=kind,
                            action="connection.refuse", object_id=record.peer,
                            detail={"peer": record.peer, "kind": kind, "reason": reason,
                                    "bytes_received": record.bytes_received,
                                    "held_s": record.held_s})


class _HeaderSlot(Ticket):
    """A balancer connection's slot while its PROXY header is read."""

    def __init__(self, slots: threading.BoundedSemaphore) -> None:
        self._slots = slots
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._slots.release()
