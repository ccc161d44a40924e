"""One accepted DICOM connection: deadlines on every read, and reactors that sleep.

pynetdicom (3.0) as it comes has two weaknesses at a front door that faces the WAN:

* An accepted socket has no read timeout.  The DUL thread blocks in ``recv()`` as
  soon as a peer has sent one byte of a PDU header, the ARTIM timer is only looked
  at between reads and never fires, and the slot is held for as long as the peer
  likes: 80 sockets that send 6 bytes each locked every site out for minutes.
* Both per-association threads poll: the DUL reactor and the association reactor
  each sleep 1 ms and look again, so 30 idle associations kept two cores busy.

The classes here replace those parts and keep pynetdicom's state machine, timers,
events and handlers as they are:

* :class:`DeadlineSocket` bounds every read: until the A-ASSOCIATE-RQ is complete,
  by an absolute deadline counted from accept(); afterwards, by the idle timeout
  for each stretch without a byte (a PDU that stops midway), and every send by the
  same (a peer that stops reading).  A read past its deadline is, to the state
  machine, a closed transport connection (Evt17).
* :class:`GatewayDUL` waits in ``select()`` on the socket and a wake-up socket
  pair (written when a primitive is queued for sending or the DUL is killed),
  with the ARTIM timer's remaining time as timeout.  Before the A-ASSOCIATE-RQ it
  refuses cheaply what cannot be one (another PDU type, an unknown type, more
  than :data:`MAX_ASSOCIATE_RQ_BYTES`) without reading the body.
* :class:`GatewayAssociation` waits on an event the DUL sets after each state
  machine action, with the idle timer's remaining time as timeout.

:class:`ConnectionRecord` notes what each connection did, so that one that never
became an association can be audited with the reason (nothing sent, a partial PDU,
garbage).  :class:`GatewayServer` asks a :class:`ConnectionGate` for a slot in the
acceptor thread before any thread exists for the connection and closes what gets
none at once; the TLS port's handshake (pacs_gateway.tls) runs in the connection's
own thread, inside the slot.

The copied control flow (``_run_reactor``, ``_read_pdu_data``,
``_create_association``) follows pynetdicom 3.0.4 (pyproject pins ``<4``).
"""

from __future__ import annotations

import copy
import gc
import logging
import queue
import select
import socket
import ssl
import struct
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import InvalidEventError
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import (
    AssociationSocket,
    RequestHandler,
    ThreadedAssociationServer,
)

from pacs_gateway import proxy_protocol

log = logging.getLogger(__name__)

#: Largest A-ASSOCIATE-RQ read before the peer is known: a request proposing all 128
#: presentation contexts with a dozen transfer syntaxes each is under 100 KiB.
MAX_ASSOCIATE_RQ_BYTES = 256 * 1024
#: Longest a reactor sleeps without a reason to wake (a safety net only: every
#: change that matters wakes it at once).
MAX_WAIT_S = 1.0
PDU_ASSOCIATE_RQ = 0x01
PDU_ABORT = 0x07


@dataclass
class ConnectionRecord:
    """What one accepted connection did, for the refusal audit when it closes."""

    peer: str
    accepted: float  # time.monotonic() at accept()
    associate_timeout_s: float
    bytes_received: int = 0
    #: A complete A-ASSOCIATE-RQ was decoded (from here on EVT_REQUESTED decides).
    requested: bool = False
    peer_closed: bool = False
    timed_out: bool = False
    garbage: str = ""
    handed_over: bool = False

    @property
    def held_s(self) -> float:
        return round(time.monotonic() - self.accepted, 3)

    def refusal(self) -> tuple[str, str] | None:
        """``(kind, reason)`` when this connection never got as far as a complete
        A-ASSOCIATE-RQ; ``None`` when it did (its outcome is audited elsewhere)."""
        if self.requested:
            return None
        n, t = self.bytes_received, self.associate_timeout_s
        if self.garbage:
            return "garbage", f"not a DICOM association request: {self.garbage}"
        if n == 0:
            if self.peer_closed:
                return "no-data", "connection closed without sending anything"
            return "no-data", f"nothing sent within {t:g} s; closed"
        if self.peer_closed:
            return "partial-pdu", (f"connection closed after {n} bytes, before a complete "
                                   "A-ASSOCIATE-RQ")
        return "partial-pdu", f"no complete A-ASSOCIATE-RQ within {t:g} s ({n} bytes); closed"


@dataclass(frozen=True)
class Timeouts:
    associate_s: float
    idle_s: float


class Ticket(Protocol):
    def release(self) -> None: ...


class ConnectionGate(Protocol):
    """Decides admission at accept() and hears how each admitted connection ended."""

    timeouts: Timeouts

    def admit(self, peer: str) -> Ticket | None: ...

    def closed(self, record: ConnectionRecord) -> None: ...

    def from_balancer(self, peer: str) -> bool:
        """Whether ``peer`` is a load balancer whose connections start with a PROXY
        protocol header (pacs_gateway/proxy_protocol.py)."""
        ...

    def admit_balancer(self, peer: str) -> Ticket | None:
        """A slot for reading one balancer connection's header (a pool of its own)."""
        ...

    def proxy_refused(self, peer: str, reason: str) -> None:
        """A balancer connection's header was missing or malformed."""
        ...


# Transport ---------------------------------------------------------------------------
class DeadlineSocket(AssociationSocket):
    """An AssociationSocket whose reads and writes cannot block without bound."""

    def __init__(self, assoc: Association, client_socket: socket.socket,
                 record: ConnectionRecord, timeouts: Timeouts) -> None:
        super().__init__(assoc, client_socket=client_socket)
        self.record = record
        self.timeouts = timeouts

    def recv(self, nr_bytes: int) -> bytearray:
        sock = self.socket
        out = bytearray()
        if sock is None:
            return out
        rec = self.record
        while len(out) < nr_bytes:
            if rec.requested:
                wait = self.timeouts.idle_s
            else:
                wait = rec.accepted + self.timeouts.associate_s - time.monotonic()
                if wait <= 0:
                    rec.timed_out = True
                    raise TimeoutError("A-ASSOCIATE-RQ deadline passed")
            sock.settimeout(wait)
            try:
                chunk = sock.recv(min(65536, nr_bytes - len(out)))
            except TimeoutError:
                rec.timed_out = True
                if rec.requested:
                    cast(GatewayAssociation, self.assoc).close_reason = (
                        f"PDU incomplete: no data for {wait:g} s")
                raise
            if not chunk:
                rec.peer_closed = True
                return out
            out += chunk
            rec.bytes_received += len(chunk)
            if rec.requested:
                # Data is arriving: a long PDU on a slow line is not an idle association.
                self.assoc.dul._idle_timer.restart()
        return out

    def send(self, bytestream: bytes) -> None:
        sock = self.socket
        if sock is not None:
            try:
                sock.settimeout(self.timeouts.idle_s)
            except OSError:
                pass
        super().send(bytestream)


# DICOM upper layer --------------------------------------------------------------------
class GatewayDUL(DULServiceProvider):
    """The DUL reactor, blocking in select() instead of polling every millisecond."""

    def __init__(self, assoc: GatewayAssociation, record: ConnectionRecord) -> None:
        super().__init__(assoc)
        self.record = record
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.on_activity = assoc.notify

    # Wake-ups -----------------------------------------------------------------
    def wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full (a wake-up is pending anyway) or already closed
            pass

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self.wake()

    def kill_dul(self) -> None:
        super().kill_dul()
        self.wake()

    def close_wakeup(self) -> None:
        self._wake_r.close()
        self._wake_w.close()

    def _drain_wakeup(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _wait(self) -> None:
        timeout = MAX_WAIT_S
        artim = self.artim_timer
        if artim._start_time is not None and artim._end_time is None:
            timeout = min(timeout, max(artim.remaining, 0.0))
        readers: list[Any] = [self._wake_r]
        wrapped = self.socket
        sock = wrapped.socket if wrapped is not None else None
        if sock is not None and sock.fileno() >= 0:
            if isinstance(sock, ssl.SSLSocket) and sock.pending():
                return  # decrypted bytes wait in the TLS layer, select() cannot see them
            readers.append(sock)
        try:
            select.select(readers, [], [], timeout)
        except (OSError, ValueError):  # the socket was closed meanwhile
            pass
        self._drain_wakeup()

    # Reading ------------------------------------------------------------------
    def pdu_header_problem(self, pdu_type: int, length: int, awaiting_rq: bool) -> str:
        """Why a PDU with this header is refused without reading its body ('' if not)."""
        if pdu_type not in range(0x01, 0x08):
            return f"unknown PDU type 0x{pdu_type:02X}"
        if awaiting_rq:
            if pdu_type not in (PDU_ASSOCIATE_RQ, PDU_ABORT):
                return f"PDU type 0x{pdu_type:02X} before an A-ASSOCIATE-RQ"
            if length > MAX_ASSOCIATE_RQ_BYTES:
                return (f"A-ASSOCIATE-RQ of {length} bytes (at most "
                        f"{MAX_ASSOCIATE_RQ_BYTES} before the peer is known)")
        return ""

    def _read_pdu_data(self) -> None:
        rec = self.record
        sock = cast(DeadlineSocket, self.socket)
        state = self.state_machine.current_state
        if rec.garbage and state == "Sta13":
            # The A-ABORT for its garbage is sent: nothing more from this peer is read.
            sock.close()
            return
        try:
            header = sock.recv(6)
        except (OSError, TimeoutError):
            self.event_queue.put("Evt17")
            return
        if len(header) < 6:
            self.event_queue.put("Evt17")
            return
        pdu_type, _, length = struct.unpack(">BBL", header)
        problem = self.pdu_header_problem(pdu_type, length, state == "Sta2")
        if problem:
            if not rec.requested:
                rec.garbage = problem
            log.info("gateway.bad_pdu peer=%s %s", rec.peer, problem)
            self.event_queue.put("Evt19")  # invalid PDU: A-ABORT, then close (AA-1)
            return
        try:
            body = sock.recv(length)
        except (OSError, TimeoutError):
            self.event_queue.put("Evt17")
            return
        if len(body) != length:
            self.event_queue.put("Evt17")
            return
        try:
            pdu, event = self._decode_pdu(header + body)
        except Exception as exc:
            if not rec.requested:
                rec.garbage = f"undecodable PDU of type 0x{pdu_type:02X}: {exc}"
            log.info("gateway.bad_pdu peer=%s undecodable: %s", rec.peer, exc)
            self.event_queue.put("Evt19")
            return
        if event == "Evt6":
            rec.requested = True
        self.event_queue.put(event)
        self._recv_pdu.put(pdu)

    # The reactor -------------------------------------------------------------------
    def run_reactor(self) -> None:
        try:
            self._reactor()
        finally:
            self.on_activity()

    def _reactor(self) -> None:
        self._idle_timer.start()
        sock = cast(DeadlineSocket, self.socket)
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                # As pynetdicom: bypass the state machine, send an A-ABORT, stop.
                log.error("gateway.dul_failed peer=%s %s; aborting", self.record.peer, exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                sock.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                self._wait()
                continue
            try:
                self.state_machine.do_action(event)
            except InvalidEventError:
                # pynetdicom's thread dies with a traceback here (e.g. a close after
                # ARTIM already went back to Sta1); the association notices either way.
                log.debug("gateway.fsm_invalid_event peer=%s event=%s state=%s",
                          self.record.peer, event, self.state_machine.current_state)
                return
            except Exception as exc:
                # A P-DATA whose command set pynetdicom cannot decode (no or an unknown
                # CommandField) raises inside the state machine and would end this
                # thread with no A-ABORT: the peer would hang and the association's end
                # would go unaudited (fuzzing finding G1).  Abort it instead.
                log.warning("gateway.dul_action_failed peer=%s event=%s %s: %s; aborting",
                            self.record.peer, event, type(exc).__name__, exc)
                self._abort_from_reactor(sock)
                return
            self.on_activity()

    def _abort_from_reactor(self, sock: DeadlineSocket) -> None:
        """Send an A-ABORT (service provider) past the state machine and stop."""
        abort_pdu = A_ABORT_RQ()
        abort_pdu.source = 0x02
        abort_pdu.reason_diagnostic = 0x00
        try:
            sock.send(abort_pdu.encode())
        except Exception:  # the peer may be gone already
            log.debug("gateway.abort_send_failed peer=%s", self.record.peer, exc_info=True)
        # Not ``assoc._kill``: the association's loop must see the DUL gone and end
        # as an abort (EVT_ABORTED), so the association's end is audited.
        self.assoc.is_aborted = True
        self.assoc.is_established = False
        self._kill_thread = True


class GatewayAssociation(Association):
    """An acceptor association whose reactor waits for news instead of polling."""

    def __init__(self, ae: Any, record: ConnectionRecord, timeouts: Timeouts,
                 ticket: Ticket, gate: ConnectionGate) -> None:
        super().__init__(ae, "acceptor")
        self.record = record
        self.ticket = ticket
        self.gate = gate
        #: Why the gateway ended the association itself ("" if it did not).
        self.close_reason = ""
        self._activity = threading.Event()
        self.dul = GatewayDUL(self, record)
        # The timers belong to the DUL just replaced: set them again on the new one.
        self.acse_timeout = timeouts.associate_s
        self.network_timeout = timeouts.idle_s

    def notify(self) -> None:
        self._activity.set()

    def kill(self) -> None:
        self._activity.set()
        super().kill()

    def run_reactor(self) -> None:
        """pynetdicom's acceptor branch, with an A-ASSOCIATE-RQ wait that ends as soon
        as the connection does (garbage, a close), not only at the deadline."""
        try:
            self.dul.start()
            self._started_dul = True
            self._dul_ready.wait()
            primitive = self._await_request()
            if primitive is None:
                self.dul.kill_dul()
                self.kill()
                return
            self.requestor.primitive = primitive
            evt.trigger(self, evt.EVT_REQUESTED, {})
            # A handler of EVT_REQUESTED may have sent an A-ASSOCIATE-RJ or A-ABORT.
            if not self.is_aborted and not self.is_rejected:
                self.acse.negotiate_association()
            if self.is_established:
                self._run_reactor()
        finally:
            self._finish()

    def _await_request(self) -> A_ASSOCIATE | None:
        deadline = self.record.accepted + cast(float, self.acse_timeout)
        while True:
            self._activity.clear()
            primitive = self.dul.receive_pdu(wait=False)
            if primitive is not None:
                return cast(A_ASSOCIATE, primitive)
            if not self.dul.is_alive():
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                if not self.record.peer_closed:
                    self.record.timed_out = True
                return None
            self._activity.wait(min(left, MAX_WAIT_S))

    def _finish(self) -> None:
        dul = cast(GatewayDUL, self.dul)
        if dul.is_alive():
            dul.kill_dul()
            dul.join(2.0)
        wrapped = dul.socket
        sock = wrapped.socket if wrapped is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        if not dul.is_alive():
            dul.close_wakeup()
        self.ticket.release()
        try:
            self.gate.closed(self.record)
        except Exception:  # pragma: no cover - auditing must not break the teardown
            log.exception("gateway.connection_close_report_failed")

    def _run_reactor(self) -> None:
        """pynetdicom's acceptor loop, waiting on ``_activity`` instead of sleeping 1 ms."""
        self._is_paused = False
        while not self._kill:
            # Paused while waiting, as pynetdicom's loop is at its checkpoint: a
            # thread that clears the checkpoint may go ahead with its own messaging.
            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False
            self._activity.clear()

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))
                continue

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                log.debug("gateway.association_released peer=%s", self.record.peer)
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                self.dul.receive_pdu(wait=False)  # so that EVT_ACSE_RECV fires
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                if self.is_established or self.is_aborted:
                    # The DUL stopped on its own (a transport error or a PDU it could
                    # not act on, after sending an A-ABORT): the association ends as
                    # an abort, so the handlers audit it and drop its state.
                    self.close_reason = self.close_reason or "protocol error; aborted"
                    self.is_aborted = True
                    self.is_established = False
                    evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if self.dul.idle_timer_expired():
                self.close_reason = f"idle for {self.network_timeout:g} s"
                log.warning("gateway.association_idle peer=%s idle_s=%s; aborting",
                            self.record.peer, self.network_timeout)
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return

            self._is_paused = True
            left = self.dul._idle_timer.remaining
            self._activity.wait(min(max(left, 0.0), MAX_WAIT_S))


# Server ------------------------------------------------------------------------------
class GatewayRequestHandler(RequestHandler):
    """Builds a :class:`GatewayAssociation` on a :class:`DeadlineSocket`."""

    server: GatewayServer

    def _create_association(self) -> Association:
        server = self.server
        record, ticket = server._handoff.record, server._handoff.ticket
        assert record is not None and ticket is not None, "not started by GatewayServer"
        timeouts = server.gate.timeouts
        assoc = GatewayAssociation(self.ae, record, timeouts, ticket, server.gate)
        record.handed_over = True
        assoc._server = server
        stamp = datetime.now().strftime("%Y%m%d%H%M%S")
        # pynetdicom counts its associations by this thread-name prefix.
        assoc.name = f"AcceptorThread@{stamp}"
        sock = DeadlineSocket(assoc, cast(socket.socket, self.request), record, timeouts)
        assoc.set_socket(sock)

        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = copy_contexts(server.contexts)
        assoc.requestor.address_info = self.remote

        for event, bound in server._handlers.items():
            if event.is_intervention and bound:
                assoc.bind(event, *bound)
            elif isinstance(event, evt.NotificationEvent):
                for handler in cast(list[tuple[Any, Any]], bound):
                    assoc.bind(event, handler[0], handler[1])
        return assoc


def copy_contexts(contexts: list[PresentationContext]) -> list[PresentationContext]:
    """A private copy of the supported contexts for one association.

    pynetdicom deep-copies them, which re-creates and re-validates every UID: about
    6,600 UIDs for the gateway's 170 storage classes and 39 transfer syntaxes, 39 ms
    per association on the development VM, and most of what a one-image association
    costs.  UIDs are immutable strings, so sharing them is safe; each context and its
    list of transfer syntaxes (the parts negotiation could change) are copied.
    """
    out = []
    for cx in contexts:
        mine = copy.copy(cx)
        mine._transfer_syntax = list(cx._transfer_syntax)
        out.append(mine)
    return out


class _Handoff(threading.local):
    record: ConnectionRecord | None = None
    ticket: Ticket | None = None
    #: ``process_request_thread`` of this class ran (a subclass let the peer through).
    reached: bool = False


class GatewayServer(ThreadedAssociationServer):
    """The DICOM listener: a slot from the gate at accept(), or an immediate close.

    Each admitted connection gets a thread of its own that owns the slot until the
    association ends.  A subclass may do work in ``process_request_thread`` before
    calling this one (pacs_gateway.tls does the TLS handshake there and audits its own
    refusals); if it never calls it, the slot is still given back.
    """

    daemon_threads = True
    #: The listen() backlog.  socketserver's 5 overflows under a burst of connects;
    #: the kernel then drops SYNs, and a site's connect() waits 1, 3, 7 s to retry.
    request_queue_size = 256

    def __init__(self, ae: Any, address: Any, ae_title: str, contexts: Any,
                 ssl_context: ssl.SSLContext | None = None,
                 evt_handlers: Any = None, request_handler: Any = None, *,
                 gate: ConnectionGate, reuse_port: bool = False) -> None:
        self.gate = gate
        self.reuse_port = reuse_port
        self._handoff = _Handoff()
        self._last_gc = time.monotonic()
        super().__init__(ae, address, ae_title, contexts, ssl_context, evt_handlers,
                         request_handler or GatewayRequestHandler)

    def server_bind(self) -> None:
        if self.reuse_port:
            assert self.socket is not None
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

    def verify_request(self, request: Any, client_address: Any) -> bool:
        peer = str(client_address[0])
        # A load balancer's connection speaks for a site named only in its PROXY
        # header: it gets a slot of the header pool now and the site's slot once read.
        ticket = (self.gate.admit_balancer(peer) if self.gate.from_balancer(peer)
                  else self.gate.admit(peer))
        if ticket is None:
            return False  # socketserver closes it: no thread, no read, no handshake
        self._handoff.ticket = ticket  # the acceptor thread's: taken by process_request
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        ticket = self._handoff.ticket
        self._handoff.ticket = None
        assert ticket is not None
        thread = threading.Thread(target=self._connection, args=(request, client_address,
                                                                   ticket),
                                  name="gateway-connection", daemon=True)
        try:
            thread.start()
        except BaseException:  # no thread: give the slot back (socketserver closes it)
            ticket.release()
            raise

    def _connection(self, request: Any, client_address: Any, ticket: Ticket) -> None:
        if self.gate.from_balancer(str(client_address[0])):
            proxied = self._read_proxy_header(request, client_address, ticket)
            if proxied is None:
                return
            client_address, ticket = proxied
        peer = str(client_address[0])
        record = ConnectionRecord(peer, time.monotonic(), self.gate.timeouts.associate_s)
        handoff = self._handoff
        handoff.record, handoff.ticket, handoff.reached = record, ticket, False
        try:
            self.process_request_thread(request, client_address)
        finally:
            reached = handoff.reached
            handoff.record = handoff.ticket = None
            if not record.handed_over:
                ticket.release()
                # Refused before DICOM (e.g. by the TLS layer, which audits that itself)
                # or failed while starting: report only what this layer saw.
                if reached or record.bytes_received or record.garbage:
                    self.gate.closed(record)

    def _read_proxy_header(self, request: Any, client_address: Any, ticket: Ticket,
                           ) -> tuple[tuple[str, int], Ticket] | None:
        """The site's address from the balancer's PROXY header, and its slot; None when
        the connection ended here (closed, refused and audited)."""
        balancer = str(client_address[0])
        try:
            header = proxy_protocol.read_header(cast(socket.socket, request),
                                                self.gate.timeouts.associate_s)
        except proxy_protocol.ProxyHeaderError as exc:
            log.info("gateway.proxy_header_refused balancer=%s %s", balancer, exc)
            if not exc.empty:
                self.gate.proxy_refused(balancer, str(exc))
            self.shutdown_request(request)
            return None
        finally:
            ticket.release()
        if header.address is None or header.port is None:
            # LOCAL: the balancer's own health check, which ends here.
            self.shutdown_request(request)
            return None
        site_ticket = self.gate.admit(header.address)
        if site_ticket is None:
            self.shutdown_request(request)
            return None
        return (header.address, header.port), site_ticket

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        record = self._handoff.record
        self._handoff.reached = True
        if record is not None:
            record.accepted = time.monotonic()  # after any TLS handshake
        try:
            self.finish_request(request, client_address)
        except Exception as exc:
            log.exception("gateway.connection_start_failed peer=%s", client_address[0])
            if record is not None and not record.handed_over:
                record.garbage = record.garbage or f"{type(exc).__name__}: {exc}"
            self.shutdown_request(request)

    def service_actions(self) -> None:
        # pynetdicom runs gc.collect() every 60th wake-up of the acceptor, which a
        # flood of refused connections turns into many a second.  Once a minute.
        now = time.monotonic()
        if now - self._last_gc >= 60.0:
            self._last_gc = now
            gc.collect()
