"""ASTM E1381 framing and E1394 records (lab/astm.py), and the listener
(lab/astm_server.py) on a free port fed by the real simulator."""

from __future__ import annotations

import socket
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lab_analyzer_support import T0, astm_listener, make_order, runs
from sqlalchemy import select

from core.errors import InvalidInput
from core.models import AuditRecord
from core.models.lab import LabControlResult, LabInboundMessage, LabResult
from devkit.analyzer_sim import ControlFault, CriticalValue, SimOptions, run_analyzer
from devkit.center import Center
from devkit.ports import wait_until
from lab import astm
from lab.results_in import ControlMeasurement, MeasuredResult, RunData


# --- E1381 framing -----------------------------------------------------------------
def test_checksum_is_the_byte_sum_mod_256_in_two_upper_hex_digits() -> None:
    # '1' 0x31 + 'A' 0x41 + ETX 0x03 = 0x75
    assert astm.make_frame(1, "A", final=True) == b"\x021A\x0375\r\n"
    # '7' 0x37 + 3 x 'z' 0x7A (0x16E) + ETB 0x17 = 0x1BC -> BC (mod 256)
    assert astm.make_frame(7, "zzz", final=False) == b"\x027zzz\x17BC\r\n"
    assert astm.parse_frame(b"\x021A\x0375\r\n") == astm.Frame(1, "A", True)
    with pytest.raises(astm.FrameError, match="bad checksum '76', expected 75"):
        astm.parse_frame(b"\x021A\x0376\r\n")
    with pytest.raises(astm.FrameError, match="frame number"):
        astm.parse_frame(b"\x029A\x03" + astm.checksum(b"9A\x03") + b"\r\n")


def test_long_records_are_cut_into_etb_frames_of_at_most_247_bytes_and_rejoined() -> None:
    long_comment = "C|1|I|" + "".join(chr(65 + i % 26) for i in range(600)) + "|G"
    records = ["H|\\^&|||CHEM1", long_comment, "L|1|N"]
    frames = astm.frames_for(records)
    # 608 characters + CR = 240 + 240 + 129 of text; 7 bytes of framing each.
    assert [len(f) for f in frames][1:4] == [247, 247, 136]
    assert all(len(f) <= astm.MAX_FRAME for f in frames)
    kinds = [astm.parse_frame(f).final for f in frames]
    assert kinds == [True, False, False, True, True]
    receiver = astm.Receiver()
    answers = receiver.feed(astm.ENQ)
    for f in frames:
        answers += receiver.feed(f[:100])  # frames may arrive in pieces
        answers += receiver.feed(f[100:])
    receiver.feed(astm.EOT)
    assert answers == astm.ACK * (1 + len(frames))
    assert receiver.transfers == [records]


def test_frame_numbers_run_1_to_7_then_0() -> None:
    frames = astm.frames_for([f"R|{i}" for i in range(10)])
    assert [astm.parse_frame(f).fn for f in frames] == [1, 2, 3, 4, 5, 6, 7, 0, 1, 2]
    receiver = astm.Receiver()
    out = receiver.feed(astm.ENQ + b"".join(frames) + astm.EOT)
    assert out == astm.ACK * 11 and len(receiver.transfers[0]) == 10


def test_bad_checksum_is_naked_and_the_retransmission_accepted() -> None:
    frames = astm.frames_for(["H|\\^&|||CHEM1", "L|1|N"])
    receiver = astm.Receiver()
    assert receiver.feed(astm.ENQ) == astm.ACK
    spoiled = frames[0][:-4] + b"00" + frames[0][-2:]
    assert receiver.feed(spoiled) == astm.NAK
    assert receiver.feed(frames[0]) == astm.ACK
    # A wrong frame number is refused too; the right one is then taken.
    assert receiver.feed(astm.make_frame(5, "L|1|N\r", final=True)) == astm.NAK
    assert receiver.feed(frames[1]) == astm.ACK
    # The same frame again (our ACK was lost) is acknowledged and not taken twice.
    assert receiver.feed(frames[1]) == astm.ACK
    receiver.feed(astm.EOT)
    assert receiver.transfers == [["H|\\^&|||CHEM1", "L|1|N"]]
    assert receiver.naks == 2 and receiver.aborted == []


def test_six_failures_give_the_transfer_up_and_nothing_of_it_is_kept() -> None:
    frames = astm.frames_for(["H|\\^&|||CHEM1", "L|1|N"])
    receiver = astm.Receiver()
    receiver.feed(astm.ENQ)
    receiver.feed(frames[0])
    spoiled = frames[1][:-4] + b"00" + frames[1][-2:]
    assert receiver.feed(spoiled * 6) == astm.NAK * 6
    assert receiver.feed(frames[1]) == astm.NAK  # given up: even a good frame
    receiver.feed(astm.EOT)
    assert receiver.transfers == []
    assert receiver.aborted and "refused 6 times" in receiver.aborted[0]
    # The line is free again for the next transfer.
    out = receiver.feed(astm.ENQ + b"".join(frames) + astm.EOT)
    assert out == astm.ACK * 3 and len(receiver.transfers) == 1


def test_an_interrupted_transfer_is_discarded() -> None:
    frames = astm.frames_for(["H|\\^&|||CHEM1", "C|1|" + "x" * 300, "L|1|N"])
    for end in ("timeout", "closed", "eot-mid-message"):
        receiver = astm.Receiver()
        receiver.feed(astm.ENQ + frames[0] + frames[1])  # frames[1] is an ETB frame
        if end == "timeout":
            receiver.timeout()
        elif end == "closed":
            receiver.connection_lost()
        else:
            receiver.feed(astm.EOT)
        assert receiver.transfers == [] and len(receiver.aborted) == 1, end
        assert not receiver.in_transfer


_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=600)


@settings(max_examples=300, deadline=None)
@given(st.lists(_TEXT.map(lambda x: "C|1|" + x), min_size=1, max_size=12),
       st.lists(st.integers(min_value=1, max_value=300), min_size=1, max_size=20))
def test_any_records_in_any_pieces_arrive_whole(records: list[str], cuts: list[int]) -> None:
    wire = astm.ENQ + b"".join(astm.frames_for(records)) + astm.EOT
    receiver = astm.Receiver()
    answers = b""
    i = 0
    for n in cuts * (len(wire) // max(1, sum(cuts)) + 1):
        answers += receiver.feed(wire[i:i + n])
        i += n
    answers += receiver.feed(wire[i:])
    assert receiver.transfers == [records] and astm.NAK not in answers


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_line_noise_never_breaks_the_receiver(noise: bytes) -> None:
    receiver = astm.Receiver()
    receiver.feed(noise)
    receiver.feed(astm.EOT)
    receiver.connection_lost()
    before = len(receiver.transfers)
    out = receiver.feed(astm.ENQ + b"".join(astm.frames_for(["H|\\^&", "L|1"])) + astm.EOT)
    assert out == astm.ACK * 3
    assert receiver.transfers[before:] == [["H|\\^&", "L|1"]]


def test_a_frame_cut_short_by_eot_is_dropped_and_the_transfer_discarded() -> None:
    frames = astm.frames_for(["H|\\^&|||CHEM1", "L|1|N"])
    receiver = astm.Receiver()
    out = receiver.feed(astm.ENQ + frames[0] + frames[1][:6] + astm.EOT)
    assert out == astm.ACK * 2 and not receiver.in_transfer
    # The sender gave up on the cut frame: nothing of the transfer is kept, and what the
    # analyzer sends next is a fresh transfer.
    assert receiver.transfers == [] and "cut short" in receiver.aborted[0]
    out = receiver.feed(astm.ENQ + b"".join(frames) + astm.EOT)
    assert out == astm.ACK * 3 and receiver.transfers[-1] == ["H|\\^&|||CHEM1", "L|1|N"]


# --- E1394 records -----------------------------------------------------------------
def test_escape_sequences_round_trip() -> None:
    d = astm.Delimiters()
    record = astm.build_record(["C", "1", "I", "a|b^c\\d&e"], d)
    assert record == "C|1|I|a&F&b&S&c&R&d&E&e"
    parsed = astm.parse_record(record, d)
    assert parsed.get(4) == "a|b^c\\d&e"
    assert parsed.type == "C"


def test_delimiters_come_from_the_h_record() -> None:
    records = ["H!~@%!R7!!CHEM1@sim",
               "O!1!L00000001!!@@@K",
               "R!1!@@@K!4.5!mmol/L!!H~W!!F!!!!20261201080000",
               "L!1"]
    run = astm.parse_run(records)
    assert run.analyzer_id == "CHEM1" and run.run_code == "R7"
    (m,) = run.results
    assert (m.accession, m.test_code, m.value, m.units, m.flags) == (
        "L00000001", "K", 4.5, "mmol/L", ("H", "W"))
    assert m.measured_at == T0
    # A value that is not a finite number is kept as text, never as a number.
    (nan,) = astm.parse_run(["H|\\^&|R8||CHEM1", "O|1|L00000001",
                             "R|1|^^^K|NaN|mmol/L", "L|1"]).results
    assert (nan.value, nan.value_text) == (None, "NaN")
    with pytest.raises(InvalidInput, match="H record"):
        astm.parse_run(["X|\\^&", "L|1"])
    with pytest.raises(InvalidInput, match="before any O record"):
        astm.parse_run(["H|\\^&|R1||CHEM1", "R|1|^^^K|4.0"])
    with pytest.raises(InvalidInput, match=r"no terminator \(L\) record"):
        astm.parse_run(["H|\\^&|R1||CHEM1", "O|1|L00000001", "R|1|^^^K|4.0|mmol/L"])


def test_a_run_builds_and_parses_back() -> None:
    t = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    run = RunData("CHEM1", "RUN-9", (
        MeasuredResult("L00000001", "K", 4.2, "4.2", "mmol/L", ("W",), t,
                       {"H": 20.0, "I": 2.0, "L": 9.0}),
        MeasuredResult("L00000001", "NA", 140.0, "140", "mmol/L", (), t,
                       {"H": 20.0, "I": 2.0, "L": 9.0}),
        MeasuredResult("L00000002", "TNI", None, ">50000", "ng/L", (">",), t),
    ), (ControlMeasurement("LOT-1", "K", 1, 4.05, t),
        ControlMeasurement("LOT-1", "K", 2, 6.8, t)))
    records = astm.build_run(run, at=t)
    assert records[0].startswith("H|\\^&|RUN-9||CHEM1^")
    # O-3 the control's specimen id, O-5 its tests, O-26 report type F (final).
    assert records[2] == "O|1|QC^LOT-1^1||^^^K|R" + "|" * 20 + "F"
    assert records[-1] == "L|1|N"
    assert astm.parse_run(records) == run


# --- the listener ------------------------------------------------------------------
def _orders(c: Center) -> None:
    with c.db.session() as s:
        make_order(s, 1, ("K", "NA", "CREA"))
        make_order(s, 2, ("K", "GLU"))
        make_order(s, 3, ("HGB",), specimen_type="whole blood")  # not CHEM1's


def test_the_listener_stores_a_simulated_run(env_center: Center) -> None:
    c = env_center
    _orders(c)
    options = SimOptions(fail_controls=(ControlFault("K", 2, 3.5),),
                         criticals=(CriticalValue("L00000002", "K", 7.1),), seed=1,
                         run_code="RUN-A")
    with astm_listener(c.db, c.settings) as port:
        sent = run_analyzer(c.db, "CHEM1", "127.0.0.1", port, options, bad_checksums=2)
        assert sent.naks == 2
        # The transfer is kept (AA) once its run is stored.
        wait_until(lambda: _accepted(c), 20, "the transfer stored and kept")
    (lab_run,) = runs(c.db)
    assert lab_run.run_code == "RUN-A" and lab_run.state == "received"
    with c.db.session() as s:
        results = {(r.specimen_id, r.test_code): r for r in s.scalars(select(LabResult))}
        measured = [r for r in results.values() if r.state == "pending"]
        assert len(measured) == 5 and all(r.run_id == lab_run.id for r in measured)
        k2 = next(r for r in measured if r.test_code == "K" and r.value == 7.1)
        assert k2.value_text == "7.1"
        hgb = next(r for r in results.values() if r.test_code == "HGB")
        assert hgb.state == "ordered" and hgb.value is None
        controls = list(s.scalars(select(LabControlResult)
                                  .where(LabControlResult.run_id == lab_run.id)))
        assert len(controls) == 14  # 7 CHEM1 analytes x 2 levels
        assert sorted(round(x.z, 2) for x in controls)[-1] == 3.5
        assert all(abs(x.z) <= 1.8 + 1e-6 for x in controls if round(x.z, 2) != 3.5)
    (ok,) = _accepted(c)
    assert ok.channel == "astm" and ok.raw.startswith("H|\\^&|RUN-A")
    assert "5 results, 14 controls stored" in ok.reason


def test_six_bad_checksums_abort_the_transfer_and_nothing_is_stored(
        env_center: Center) -> None:
    c = env_center
    _orders(c)
    with astm_listener(c.db, c.settings) as port:
        with pytest.raises(astm.TransferError, match="refused 6 times"):
            run_analyzer(c.db, "CHEM1", "127.0.0.1", port, SimOptions(seed=2),
                         bad_checksums=6)
        # The same run sent properly afterwards is taken: the link recovered.
        run_analyzer(c.db, "CHEM1", "127.0.0.1", port, SimOptions(seed=2, run_code="B"))
        (lab_run,) = wait_until(lambda: runs(c.db), 20, "the second run stored")
    assert lab_run.run_code == "B"


def test_an_analyzer_from_the_wrong_address_or_unknown_is_refused(
        env_center: Center, tmp_path: Path) -> None:
    c = env_center
    _orders(c)
    # An H record naming an analyzer the catalog does not have, from a good address.
    run = RunData("CHEM9", "X1", (MeasuredResult("L00000001", "K", 4.0, "4.0", "mmol/L",
                                                 (), T0),), ())
    with astm_listener(c.db, c.settings) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            astm.Sender(sock).send(astm.build_run(run))
        wait_until(lambda: _refusals(c), 20, "the refusal recorded")
    # A catalog where CHEM1 may only connect from another address: refused at connect.
    moved = tmp_path / "catalog.toml"
    shipped = Path(__file__).resolve().parent.parent / "lab" / "catalog.toml"
    moved.write_text(shipped.read_text().replace(
        'addresses = ["127.0.0.1", "::1"]', 'addresses = ["10.9.9.9"]'))
    settings = c.settings.model_copy(update={"lab_catalog": moved})
    with astm_listener(c.db, settings) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(astm.ENQ)
            assert sock.recv(1) == b""  # closed without an ACK
        wait_until(lambda: len(_refusals(c)) == 2, 20, "the second refusal recorded")
    assert runs(c.db) == []
    first, second = _refusals(c)
    assert "unknown analyzer 'CHEM9'" in first.reason and first.channel == "astm"
    assert first.raw.startswith("H|\\^&|X1||CHEM9")
    assert "not the address of any ASTM analyzer" in second.reason
    with c.db.session() as s:
        assert len(list(s.scalars(select(AuditRecord).where(
            AuditRecord.action == "lab.message_refused")))) == 2


def test_a_query_a_resent_run_and_a_bad_transfer_on_one_session(env_center: Center) -> None:
    c = env_center
    _orders(c)
    run = RunData("CHEM1", "R-1", (MeasuredResult("L00000001", "K", 4.0, "4.0", "mmol/L",
                                                  (), T0),), ())
    with astm_listener(c.db, c.settings) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sender = astm.Sender(sock)
            sender.send(["H|\\^&|Q1||CHEM1", "Q|1|^L00000001||ALL", "L|1|N"])
            sender.send(astm.build_run(run))
            sender.send(astm.build_run(run))  # our ACK of the run "lost": sent again
            sender.send(["H|\\^&|R-2||CHEM1", "R|1|^^^K|4.0", "L|1|N"])
            wait_until(lambda: len(_kept(c)) == 4, 20, "four transfers kept")
    query, first, again, bad = _kept(c)
    assert query.outcome == "AE" and "host query" in query.reason
    assert first.outcome == "AA" and "1 results, 0 controls stored" in first.reason
    assert again.outcome == "AA" and "(already received)" in again.reason
    assert bad.outcome == "AE" and "before any O record" in bad.reason
    assert [r.run_code for r in runs(c.db)] == ["R-1"]


def test_a_silent_sender_times_out_and_nothing_is_stored(
        env_center: Center, monkeypatch: pytest.MonkeyPatch) -> None:
    c = env_center
    _orders(c)
    monkeypatch.setattr(astm, "RECEIVER_TIMEOUT_S", 0.5)
    frames = astm.frames_for(astm.build_run(RunData("CHEM1", "T-1", (MeasuredResult(
        "L00000001", "K", 4.0, "4.0", "mmol/L", (), T0),), ())))
    with astm_listener(c.db, c.settings) as port:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(astm.ENQ)
            assert sock.recv(1) == astm.ACK
            sock.sendall(frames[0])
            assert sock.recv(1) == astm.ACK
            # The sender falls silent past the receiver's timer: the listener gives up
            # the transfer and closes; what comes later is not a run.
            assert sock.recv(1) == b""
    assert runs(c.db) == [] and _kept(c) == []


def test_the_sender_gives_up_when_no_answer_comes() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            peer, _ = server.accept()
            with peer:
                with pytest.raises(astm.TransferError, match=r"no answer within 0\.3 s"):
                    astm.Sender(sock, timeout_s=0.3).send(["H|\\^&|X||CHEM1", "L|1"])
                assert peer.recv(1) == astm.ENQ


def _kept(c: Center) -> list[LabInboundMessage]:
    with c.db.session() as s:
        return list(s.scalars(select(LabInboundMessage).order_by(LabInboundMessage.id)))


def _accepted(c: Center) -> list[LabInboundMessage]:
    with c.db.session() as s:
        return list(s.scalars(select(LabInboundMessage).where(LabInboundMessage.outcome == "AA")))


def _refusals(c: Center) -> list[LabInboundMessage]:
    with c.db.session() as s:
        return list(s.scalars(select(LabInboundMessage).where(LabInboundMessage.outcome == "AR")
                              .order_by(LabInboundMessage.id)))
