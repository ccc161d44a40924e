"""The gateway's receive path after A-ASSOCIATE-AC: the bytes a site sends on the TCP
connection, through pynetdicom's PDU framing and decoding, P-DATA reassembly into DIMSE
messages, and the gateway's own C-STORE handler (``GatewaySCP._store``: inspection,
spool, receipt row) with a real spool and SQLite database in a temporary folder.

The stream is cut into PDUs as ``DULServiceProvider._read_pdu_data`` cuts it (6-byte
header, type, declared length); then, as pynetdicom's reactor does:

- an unknown PDU type, a PDU that does not decode, a DIMSE message that does not convert
  to a primitive, a context that was not accepted: pynetdicom aborts the association
  (the documented refusal; the harness stops there);
- an exception from ``P_DATA_TF.to_primitive`` or ``DIMSEMessage.decode_msg`` (a
  command set that does not decode, has no CommandField or an unknown one): these run
  inside the state machine's action (``fsm.DT_2``), where pynetdicom lets the exception
  kill the DUL thread.  The association then ends without an A-ABORT PDU and without
  EVT_ABORTED, so the gateway neither audits its end nor forgets its ``_AssocState``.
  That was finding G1 of benchmarks/RESULTS.md, fixed in the gateway's DUL
  (``pacs_gateway/connection.py`` aborts the association and audits it; tested against
  a real gateway in tests/test_gateway_hostile.py).  The harness counts such inputs in
  :data:`DIMSE_DECODE_FAILURES` and ends the association there, as the gateway does;
- an exception from ``GatewaySCP._store``: the handler's safety net turns it into
  0x0110 "internal error"; a finding (every refusal must be a defined status).

After every input the spool must hold no partial file (``tmp/*.part``), and every file
in ``ready/`` must be an instance the handler acknowledged, byte for byte.

Accepted presentation contexts: 1 CT Image / Explicit VR LE, 3 MR Image / Implicit VR
LE, 5 MR Image / Deflated Explicit VR LE, 7 Verification / Implicit VR LE.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

INSTRUMENT = ("pynetdicom", "pydicom", "pacs_gateway")
MAX_LEN = 64 * 1024

CONTEXTS = {
    1: ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1"),
    3: ("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2"),
    5: ("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2.1.99"),
    7: ("1.2.840.10008.1.1", "1.2.840.10008.1.2"),
}
SITE_ID = "fuzz-site"
#: Inputs whose DIMSE command set raised inside the state machine (finding G1).
DIMSE_DECODE_FAILURES = [0]
CALLING_AE = "FUZZSCU"


def _scratch() -> Path:
    """The center's home for the run: in ``RDC_FUZZ_SCRATCH`` (which :mod:`fuzz.runner`
    makes on tmpfs, since every acknowledged instance is fsynced, and removes after)."""
    return Path(tempfile.mkdtemp(prefix="rdc-fuzz-gateway-",
                                 dir=os.environ.get("RDC_FUZZ_SCRATCH") or None))


def load() -> Callable[[bytes], None]:
    import logging

    from pynetdicom import AE, evt
    from pynetdicom.association import Association
    from pynetdicom.dimse_messages import DIMSEMessage
    from pynetdicom.dimse_primitives import C_STORE
    from pynetdicom.dul import _PDU_TYPES
    from pynetdicom.pdu import P_DATA_TF
    from pynetdicom.presentation import build_context
    from pynetdicom.service_class import StorageServiceClass
    from pynetdicom.sop_class import uid_to_service_class

    from core.db import Database, migrate
    from core.group_commit import GroupCommitter
    from core.settings import Settings
    from core.sites import SiteSpec, add_site
    from pacs_gateway.scp import GatewaySCP, _AssocState
    from pacs_gateway.spool import Spool

    # pynetdicom and the gateway log every refusal; the fuzzer makes millions.
    logging.disable(logging.CRITICAL)
    home = _scratch()
    settings = Settings(home=home)
    migrate(settings.database_url)
    db = Database(settings.database_url)
    with db.session() as s:
        add_site(s, SiteSpec(id=SITE_ID, name="fuzz site", ae_title=CALLING_AE,
                             host="127.0.0.1", port=11112,
                             allowed_addresses=("127.0.0.1/32",)), actor="fuzz")
    spool = Spool(home / "spool", min_free_bytes=0)
    committer = GroupCommitter(db)
    scp = GatewaySCP(settings, db, spool, committer)
    assoc = Association(AE(ae_title=settings.gateway_ae), "acceptor")
    accepted: dict[int, Any] = {}
    for cx_id, (abstract, syntax) in CONTEXTS.items():
        cx = build_context(abstract, syntax)
        cx.context_id = cx_id
        cx.result = 0x00
        accepted[cx_id] = cx

    def store(request: C_STORE, cx_id: int, acknowledged: dict[str, bytes]) -> None:
        state = _AssocState(SITE_ID, CALLING_AE, "127.0.0.1")
        event = evt.Event(assoc, evt.EVT_C_STORE,
                          {"request": request, "context": accepted[cx_id].as_tuple})
        before = set(spool.ready.iterdir())
        status = scp._store(event, state)
        new = set(spool.ready.iterdir()) - before
        if status == 0x0000:
            assert len(new) == 1, f"acknowledged, but {len(new)} new spool files"
            acknowledged[new.pop().name] = event.encoded_dataset(include_meta=True)
        else:
            assert not isinstance(status, int), f"bare status {status!r}"
            assert 0xA000 <= int(status.Status) <= 0xCFFF, f"status 0x{status.Status:04X}"
            assert not new, f"refused (0x{status.Status:04X}) but spooled {new}"

    def one_input(data: bytes) -> None:
        message = DIMSEMessage()
        acknowledged: dict[str, bytes] = {}
        pos = 0
        try:
            while len(data) - pos >= 6:
                pdu_type, _, length = struct.unpack_from(">BBL", data, pos)
                if pdu_type not in range(1, 8):
                    break  # Evt19: unrecognised PDU, A-ABORT
                end = pos + 6 + length
                if end > len(data):
                    break  # Evt17: the connection closed inside the PDU
                raw, pos = data[pos:end], end
                pdu = _PDU_TYPES[raw[:1]][0]()
                try:
                    pdu.decode(raw)
                except Exception:
                    break  # READ_PDU_EXC_F -> Evt19, A-ABORT
                if not isinstance(pdu, P_DATA_TF):
                    break  # release, abort, or an unexpected PDU: the association ends
                # fsm.DT_2: outside any handler of pynetdicom's (finding G1).
                try:
                    complete = message.decode_msg(pdu.to_primitive(), assoc)
                except Exception:
                    DIMSE_DECODE_FAILURES[0] += 1
                    break
                if not complete:
                    continue
                cx_id = message.context_id
                try:
                    request = message.message_to_primitive()
                except Exception:
                    break  # "Received an invalid DIMSE message" -> Evt19
                message = DIMSEMessage()
                if not getattr(request, "is_valid_request", True):
                    continue  # logged and ignored by Association._serve_request
                if cx_id not in accepted:
                    break  # "invalid or rejected context ID": A-ABORT
                if isinstance(request, C_STORE):
                    uid = str(request.AffectedSOPClassUID or "")
                    if uid_to_service_class(uid) is StorageServiceClass:
                        store(request, cx_id, acknowledged)
                    else:
                        break  # NotImplementedError in the service class: A-ABORT
        finally:
            partial = list(spool.tmp.iterdir())
            ready = {p.name: p.read_bytes() for p in spool.ready.iterdir()}
            for p in [*partial, *spool.ready.iterdir()]:
                p.unlink()
        assert not partial, f"partial spool files left behind: {partial}"
        assert ready == acknowledged, "spool files that are not the acknowledged instances"

    return one_input
