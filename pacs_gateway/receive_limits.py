"""Bounds on what one DICOM association can make the gateway read, hold and write.

pynetdicom (3.0) trusts the peer with sizes: the DUL reads a PDU header and then
``recv(length)`` for whatever length it declares, so a header declaring 2**32-1
bytes followed by a stream of junk grew a gateway process by a gigabyte; and a
C-STORE dataset is assembled in memory, fragment by fragment, however large.
This module bounds both without replacing pynetdicom's DUL (whichever DUL class
the server uses, pynetdicom's or :mod:`pacs_gateway.connection`'s):

* **PDU length.**  Each association's transport socket gets its ``recv`` wrapped
  (:class:`_Guard`).  The DUL reads every PDU as ``recv(6)`` for the header, then
  ``recv(length)`` for the body; the guard looks at each header as it passes and,
  when the declared length is over the limit for that PDU type, sends an A-ABORT
  (service provider, invalid PDU parameter value), shuts the connection down and
  raises, before the body is read: a declared length of 2**32-1 costs six bytes.
  The limits: P-DATA-TF ``pdu_limit`` once the association is established (the
  gateway announces ``pdu_size`` in its A-ASSOCIATE-AC, and tolerates senders that
  exceed that a little), 1 MiB for every PDU before that and for the association
  PDUs, 64 bytes for A-RELEASE and A-ABORT (their bodies are 4 bytes).
* **Message size.**  The guard also reads the PDV item headers of each P-DATA-TF
  body and counts, per DIMSE message, command bytes (at most 64 KiB; a command set
  is a few hundred bytes) and dataset bytes: at most ``dataset_limit`` for a
  C-STORE, 1 MiB for anything else (the gateway serves nothing but C-ECHO and
  C-STORE).  Over that, the association is aborted the same way.  An abort rather
  than a failure status: an answer would have to wait until the sender has sent
  the rest, however much that is.
* **Datasets go to disk as they arrive.**  pynetdicom's chunked receive mode
  (``_config.STORE_RECV_CHUNKED_DATASET``) writes each C-STORE dataset to a file
  fragment by fragment; the temporary file it opens is created, for guarded
  associations, in the spool's ``tmp/`` (``<uuid>.part``, as every half-written
  spool file), so that the handler can inspect it from disk and the spool can take
  it by a rename.  A file left by an association that ended
  before its dataset was complete is removed when the association ends (and by
  ``Spool.drop_partial`` after a crash).

Install once per process and listener with :meth:`ReceiveLimiter.handlers`.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from pynetdicom import _config, dimse_messages, evt
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.pdu import A_ABORT_RQ

from core.errors import ConfigurationError
from core.settings import Settings
from pacs_gateway.inspect import InflateLimits

log = logging.getLogger(__name__)

MiB = 2**20
#: A-ASSOCIATE-RQ/-AC/-RJ, and any PDU before the association is established.
ASSOCIATE_PDU_LIMIT = MiB
#: A-RELEASE-RQ/-RP and A-ABORT: 4-byte bodies.
CONTROL_PDU_LIMIT = 64
#: The command set of one DIMSE message.
COMMAND_LIMIT = 64 * 1024
#: The dataset of a DIMSE message other than a C-STORE request.
OTHER_DATASET_LIMIT = MiB
#: DUL states of an established association (PS3.8 9.2, pynetdicom's names).
_OPEN_STATES = frozenset({"Sta6", "Sta7", "Sta8", "Sta9", "Sta10", "Sta11", "Sta12"})
_PDU_NAMES = {1: "A-ASSOCIATE-RQ", 2: "A-ASSOCIATE-AC", 3: "A-ASSOCIATE-RJ", 4: "P-DATA-TF",
              5: "A-RELEASE-RQ", 6: "A-RELEASE-RP", 7: "A-ABORT"}
#: A-ABORT source 2 (service provider), reason 6: invalid PDU parameter value.
_ABORT_SOURCE, _ABORT_REASON = 0x02, 0x06


@dataclass(frozen=True)
class ReceiveLimits:
    """The configured bounds, in bytes (see core/settings.py for the defaults)."""

    pdu_size: int
    pdu_limit: int
    dataset_limit: int
    inflate: InflateLimits

    @classmethod
    def from_settings(cls, settings: Settings) -> ReceiveLimits:
        pdu_size = settings.gateway_pdu_size_kb * 1024
        pdu_limit = settings.gateway_pdu_limit_mb * MiB
        if pdu_limit < pdu_size + 6:
            raise ConfigurationError(
                f"RDC_GATEWAY_PDU_LIMIT_MB ({settings.gateway_pdu_limit_mb}) must exceed the "
                f"announced RDC_GATEWAY_PDU_SIZE_KB ({settings.gateway_pdu_size_kb})")
        dataset_limit = settings.gateway_dataset_limit_mb * MiB
        inflated = settings.gateway_inflated_limit_mb * MiB or dataset_limit
        return cls(pdu_size=pdu_size, pdu_limit=pdu_limit, dataset_limit=dataset_limit,
                   inflate=InflateLimits(max_bytes=inflated,
                                         max_ratio=settings.gateway_inflate_ratio_limit))


class ReceiveRefused(ConnectionAbortedError):
    """The guard aborted the association; to the DUL, a closed transport connection."""


#: The guard of each live association (weak: an association that ends drops out).
_GUARDS: weakref.WeakKeyDictionary[Any, _Guard] = weakref.WeakKeyDictionary()
#: What pynetdicom's chunked receive calls to open its file (it imports the name).
_TEMPFILE_NAME = "NamedTemporaryFile"
_ORIGINAL_TEMPFILE = getattr(dimse_messages, _TEMPFILE_NAME)
_install_lock = threading.Lock()


def _unlink_all(paths: list[Path]) -> None:
    for p in paths:
        try:
            p.unlink(missing_ok=True)
        except OSError:  # pragma: no cover - best effort
            log.warning("gateway.receive_file_not_removed path=%s", p)


class _ReceiveFile:
    """What pynetdicom's chunked receive uses of the NamedTemporaryFile it opens
    (``name``, ``write``, ``file.flush()``, ``close``), as a file named like every
    other file of the spool's tmp/: a fresh UUID, ``.part``.  pynetdicom closes it
    after the C-STORE handler and unlinks it unless the spool took it."""

    def __init__(self, path: Path) -> None:
        self.name = str(path)
        self.file: BinaryIO = open(path, "xb")  # closed by pynetdicom

    def write(self, data: bytes) -> int:
        return self.file.write(data)

    def close(self) -> None:
        self.file.close()


class _Guard:
    """Watches one association's PDUs as its DUL reads them; see the module doc."""

    def __init__(self, limits: ReceiveLimits, assoc: Any, transport: Any, spool_tmp: Path,
                 peer: str) -> None:
        self.limits = limits
        self._assoc = weakref.ref(assoc)  # the guard must not keep its association alive
        self._transport = transport
        self._recv: Callable[[int], bytearray] = transport.recv
        self.spool_tmp = spool_tmp
        self.peer = peer
        self.refusal = ""
        self._body: tuple[int, int] | None = None  # (type, length) of the PDU being read
        self._command = 0
        self._dataset = 0
        #: Receive files created for this association; whatever of them is still
        #: there when it ends was never taken by the spool.
        self.files: list[Path] = []
        weakref.finalize(assoc, _unlink_all, self.files)

    # The wrapped recv ------------------------------------------------------------
    def recv(self, nr_bytes: int) -> bytearray:
        if self.refusal:
            raise ReceiveRefused(self.refusal)
        body = self._body
        if body is not None and nr_bytes != body[1]:
            body = self._body = None  # not the body read we expected: a new header
        data = self._recv(nr_bytes)
        if body is None:
            if nr_bytes == 6 and len(data) == 6:
                pdu_type, _, length = struct.unpack(">BBL", data)
                if pdu_type in _PDU_NAMES:
                    self._check_header(pdu_type, length)
                    self._body = (pdu_type, length)
        else:
            self._body = None
            if body[0] == 0x04 and len(data) == body[1]:
                self._count_pdvs(data)
        return data

    def _state(self) -> str:
        assoc = self._assoc()
        try:
            return str(assoc.dul.state_machine.current_state) if assoc is not None else ""
        except AttributeError:
            return ""

    def _check_header(self, pdu_type: int, length: int) -> None:
        if pdu_type == 0x04 and self._state() in _OPEN_STATES:
            limit = self.limits.pdu_limit
        elif pdu_type in (5, 6, 7):
            limit = CONTROL_PDU_LIMIT
        else:
            limit = ASSOCIATE_PDU_LIMIT
        if length > limit:
            self._refuse(f"{_PDU_NAMES[pdu_type]} PDU declares {length} bytes, more than the "
                         f"{limit} this gateway reads")

    def _count_pdvs(self, body: bytearray) -> None:
        """Count the command and dataset bytes of the P-DATA-TF ``body``, per message."""
        off, end = 0, len(body)
        while off + 6 <= end:
            item_length = struct.unpack_from(">L", body, off)[0]
            if item_length < 2:
                return  # malformed: pynetdicom's decoder refuses it
            size = min(item_length - 2, end - off - 6)
            control = body[off + 5]
            if control & 0x01:
                self._command += size
                if self._command > COMMAND_LIMIT:
                    self._refuse(f"a DIMSE command set of more than {COMMAND_LIMIT} bytes")
                if control & 0x02:
                    self._command = 0
            else:
                self._dataset += size
                limit, what = self._dataset_limit()
                if self._dataset > limit:
                    self._refuse(f"{what} dataset of more than {limit} bytes (the limit)")
                if control & 0x02:
                    self._dataset = 0
            off += 4 + item_length

    def _dataset_limit(self) -> tuple[int, str]:
        assoc = self._assoc()
        message = getattr(getattr(assoc, "dimse", None), "message", None)
        # Until the message's command set is decoded its kind is unknown; the first
        # PDU of it is bounded by the PDU limit anyway.
        if message is None or type(message) is DIMSEMessage or isinstance(message, C_STORE_RQ):
            return self.limits.dataset_limit, "a C-STORE"
        return OTHER_DATASET_LIMIT, f"a {type(message).__name__.replace('_', '-')}"

    def _refuse(self, reason: str) -> None:
        """A-ABORT, shut the connection down (a reset, not a lingering close), raise."""
        self.refusal = reason
        log.warning("gateway.receive_refused peer=%s %s; aborting the association",
                    self.peer, reason)
        assoc = self._assoc()
        if assoc is not None and hasattr(assoc, "close_reason"):
            assoc.close_reason = reason  # pacs_gateway.connection audits it
        raw = getattr(self._transport, "socket", None)
        if raw is not None:
            abort = A_ABORT_RQ()
            abort.source, abort.reason_diagnostic = _ABORT_SOURCE, _ABORT_REASON
            try:
                raw.settimeout(2.0)
                raw.sendall(abort.encode())
            except OSError:
                pass
            try:
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                raw.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        raise ReceiveRefused(reason)

    # Receive files ------------------------------------------------------------------
    def new_file(self) -> _ReceiveFile:
        f = _ReceiveFile(self.spool_tmp / f"{uuid.uuid4()}.part")
        self.files.append(Path(f.name))
        return f

    def discard_files(self) -> None:
        """Remove this association's receive files the spool did not take."""
        _unlink_all(self.files)
        self.files.clear()


def _receive_file(*args: Any, **kw: Any) -> Any:
    """pynetdicom's NamedTemporaryFile, as called by its chunked receive (in the DUL
    thread): for a guarded association, a file in the spool's tmp/."""
    assoc = getattr(threading.current_thread(), "assoc", None)
    guard = _GUARDS.get(assoc) if assoc is not None else None
    if guard is None:
        return _ORIGINAL_TEMPFILE(*args, **kw)
    return guard.new_file()


@dataclass(frozen=True)
class ReceivedDataset:
    """A C-STORE's Part 10 stream: the receive file (chunked receive, the gateway's
    way) or bytes (where chunked receive is off, e.g. a harness driving the handler)."""

    source: Path | bytes
    size: int


def received_dataset(event: evt.Event) -> ReceivedDataset:
    """The dataset of an EVT_C_STORE event, without reading a receive file into memory."""
    path = getattr(event.request, "_dataset_path", None)
    if isinstance(path, Path):
        return ReceivedDataset(path, path.stat().st_size)
    data = event.encoded_dataset(include_meta=True)
    return ReceivedDataset(data, len(data))


def guard_of(assoc: Any) -> _Guard | None:
    """The guard of ``assoc`` (None if it has none), e.g. for the reason of an abort."""
    return _GUARDS.get(assoc)


class ReceiveLimiter:
    """Installs the limits in this process and guards each association."""

    def __init__(self, limits: ReceiveLimits, spool_tmp: Path) -> None:
        self.limits = limits
        self.spool_tmp = spool_tmp

    def handlers(self) -> list[tuple[evt.NotificationEvent, Callable[[evt.Event], None]]]:
        """Turn on chunked receive and return the event handlers to bind to the server."""
        with _install_lock:
            _config.STORE_RECV_CHUNKED_DATASET = True
            setattr(dimse_messages, _TEMPFILE_NAME, _receive_file)
        return [(evt.EVT_CONN_OPEN, self._on_open),
                (evt.EVT_RELEASED, self._on_closed),
                (evt.EVT_ABORTED, self._on_closed)]

    def _on_open(self, event: evt.Event) -> None:
        assoc = event.assoc
        transport = assoc.dul.socket
        if transport is None:  # pragma: no cover - an acceptor always has its socket
            return
        address = getattr(event, "address", None)
        guard = _Guard(self.limits, assoc, transport, self.spool_tmp,
                       str(address[0]) if address else "")
        # An instance attribute shadows the class's recv for this socket only.
        setattr(transport, "recv", guard.recv)  # noqa: B010 - a method, per instance
        _GUARDS[assoc] = guard

    def _on_closed(self, event: evt.Event) -> None:
        guard = _GUARDS.get(event.assoc)
        if guard is not None:
            guard.discard_files()
