"""Lab results back to the site: the ORU^R01 as the site's HIS reads it, and its way out
through delivery to a real MLLP receiver whose ACK lands on the message."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hl7apy.core import Message
from hl7apy.parser import parse_message
from lab_review_support import PASSPHRASE, T0, Measured, make_order, make_site
from sqlalchemy import func, select

from conftest import Center
from core import audit, jobs
from core.errors import Conflict, InvalidInput
from core.models import AuditRecord, Delivery, LabOrder, LabResult, OutboundMessage
from devkit.hl7_site import SiteReceiver
from lab.orders import OrderRequest, SpecimenRequest, accept_order
from lab.results_out import ORUError, build_oru, release, send_rejection, validate_oru
from lab.signing import sign_results
from reports.keys import issue_key


def _obx(msg: Message) -> list[dict[str, str]]:
    out = []
    for seg in msg.children:
        for obs in _walk(seg):
            if obs.name == "OBX":
                out.append({"type": obs.obx_2.value, "code": obs.obx_3.obx_3_1.value,
                            "system": obs.obx_3.obx_3_3.value, "value": obs.obx_5.value,
                            "units": obs.obx_6.obx_6_1.value, "range": obs.obx_7.value,
                            "flag": obs.obx_8.value, "status": obs.obx_11.value})
    return out


def _walk(node: Any) -> list[Any]:
    children = getattr(node, "children", None)
    if getattr(node, "name", "") in ("OBX", "NTE", "OBR", "ORC", "PID", "PV1"):
        return [node]
    return [x for child in (children or []) for x in _walk(child)]


def test_oru_parsed_back_has_loinc_units_ranges_flags(center: Center) -> None:
    make_site(center, "county-a")
    with center.db.session() as s:
        order, specimen, rows = make_order(s, [
            Measured("K", 6.4, "autoverified", "HH", critical=True),
            Measured("NA", 131.0, "autoverified", "L"),
            Measured("TNI", None, "autoverified", value_text="<0.01"),
            Measured("GLU", None, "rejected"),
        ], patient_name="王^小明")
        rows[3].review_reason = "clotted | sample ^ lost"
        message = build_oru(s, rows, kind="lab-result")
        body, control_id, msg_id = message.body, message.control_id, message.id
        assert message.subject == f"lab_order:{order.id}"
        other = build_oru(s, rows[:1], kind="lab-critical", preliminary=True)
        assert other.control_id != control_id
        prelim = other.body

    assert control_id == f"LAB{msg_id:08d}"
    parsed = parse_message(body)
    assert parsed.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert parsed.msh.msh_10.value == control_id
    assert parsed.msh.msh_6.to_er7() == "county-a"  # receiving facility: the site
    assert parsed.msh.msh_4.to_er7() == center.settings.gateway_ae  # sending: the center
    assert parsed.msh.msh_12.value == "2.5.1"
    segs = {getattr(n, "name", ""): n for n in _walk(parsed)}
    assert segs["PID"].pid_3.pid_3_1.value == "P001"
    assert segs["PID"].pid_5.to_er7() == "王^小明"
    assert segs["PV1"].pv1_19.value == "V1"
    assert segs["ORC"].orc_2.value == order.placer_order_number
    assert segs["ORC"].orc_3.value == order.filler_order_number
    assert segs["OBR"].obr_20.value == specimen.accession
    assert segs["OBR"].obr_25.value == "F"
    obx = _obx(parsed)
    assert obx == [
        {"type": "NM", "code": "2823-3", "system": "LN", "value": "6.4", "units": "mmol/L",
         "range": "3.5-5.3", "flag": "HH", "status": "F"},
        {"type": "NM", "code": "2951-2", "system": "LN", "value": "131", "units": "mmol/L",
         "range": "137-147", "flag": "L", "status": "F"},
        {"type": "ST", "code": "89579-7", "system": "LN", "value": "<0.01", "units": "ng/L",
         "range": obx[2]["range"], "flag": "", "status": "F"},
        {"type": "", "code": "14749-6", "system": "LN", "value": "", "units": "",
         "range": "", "flag": "", "status": "X"},
    ]
    assert obx[2]["range"].startswith("<")  # troponin has an upper limit only
    # The rejection's reason, with HL7 delimiters escaped (the message still parses).
    nte = [n for n in _walk(parsed) if getattr(n, "name", "") == "NTE"]
    assert len(nte) == 1
    assert "clotted \\F\\ sample \\S\\ lost" in body
    assert nte[0].nte_3.value == "Result rejected: clotted \\F\\ sample \\S\\ lost"
    # A preliminary message (a critical value told at once): OBX-11 and OBR-25 are P.
    assert [seg.split("|")[11] for seg in prelim.split("\r") if seg.startswith("OBX")] == ["P"]
    assert [seg.split("|")[25] for seg in prelim.split("\r") if seg.startswith("OBR")] == ["P"]


def test_build_refuses_results_of_two_orders_and_stores_nothing(center: Center) -> None:
    make_site(center, "county-a")
    with center.db.session() as s:
        _, _, a = make_order(s, [Measured("K", 4.0, "autoverified")])
        _, _, b = make_order(s, [Measured("K", 4.1, "autoverified")])
        with pytest.raises(InvalidInput, match="one order's results"):
            build_oru(s, [a[0], b[0]], kind="lab-result")
        with pytest.raises(InvalidInput, match="at least one result"):
            build_oru(s, [], kind="lab-result")
        a[0].test_code = "NOPE"  # a code the catalog does not know
        with pytest.raises(InvalidInput, match="NOPE"):
            build_oru(s, a, kind="lab-result")
        assert s.scalar(select(func.count()).select_from(OutboundMessage)) == 0
    # What does not parse back under STRICT validation never leaves (no OBX-11 status).
    with pytest.raises(ORUError, match=r"does not validate: Missing required child OBX\.OBX_11"):
        validate_oru("MSH|^~\\&|RDC-LAB|RDC||county-a|20261201120000||ORU^R01^ORU_R01|X1|P|"
                     "2.5.1\rPID|1||P1||Doe\rOBR|1|||2823-3^K^LN\rOBX|1|NM|2823-3^K^LN||5.1")


def test_release_to_an_hl7_site_is_delivered_and_the_ack_recorded(env_center: Center) -> None:
    center = env_center
    his = SiteReceiver().start()
    try:
        make_site(center, "county-a", hl7_port=his.port)
        with center.db.session() as s:
            order, _, rows = make_order(s, [Measured("K", 4.2, "autoverified"),
                                            Measured("NA", 140.0, "verified")])
            messages = release(s, rows, actor="worker")
            assert len(messages) == 1
            message_id, control_id = messages[0].id, messages[0].control_id
            delivery = s.scalar(select(Delivery).where(Delivery.message_id == message_id))
            assert delivery is not None and delivery.channel == "hl7"
            job_id = delivery.job_id
            assert {r.message_id for r in rows} == {message_id}
            assert s.get(LabOrder, order.id).state == "resulted"  # type: ignore[union-attr]
            # Released twice (a retried job): nothing is sent again.
            assert release(s, rows, actor="worker") == []
        assert job_id is not None
        assert jobs.execute(center.db, job_id) == "succeeded"
        assert len(his.received()) == 1
        assert his.received()[0].control_id == control_id
        assert "2823-3^Potassium" in his.received()[0].raw
        with center.db.session() as s:
            stored = s.get(OutboundMessage, message_id)
            assert stored is not None
            assert stored.ack_code == "AA"
            assert stored.acked_at is not None
            assert stored.ack_detail["control_id"] == control_id
            assert audit.verify(s).ok
            actions = list(s.scalars(select(AuditRecord.action).where(
                AuditRecord.object_type == "lab_order",
                AuditRecord.object_id == str(order.id))))
            assert actions == ["lab.release"]
    finally:
        his.stop()


def test_release_to_a_site_without_hl7_is_stored_not_sent(center: Center) -> None:
    make_site(center, "county-a")  # takes results, but not over HL7
    with center.db.session() as s:
        _, _, rows = make_order(s, [Measured("K", 4.2, "autoverified")], patient_name="")
        [message] = release(s, rows, actor="worker")
        assert message.body.startswith("MSH|")
        # No name: the required PID-5 carries HL7's explicit null.
        assert 'PID|1||P001^^^county-a^PI||""|' in message.body
        _, _, other = make_order(s, [Measured("K", 4.3, "autoverified")],
                                 patient_name="Zhang^San=张^三")
        [named] = release(s, other, actor="worker")
        assert "|Zhang^San~张^三|" in named.body  # alphabetic and ideographic repetitions
        assert s.scalar(select(func.count()).select_from(Delivery)) == 0


def test_release_refuses_a_held_result_and_stores_nothing(center: Center) -> None:
    make_site(center, "county-a")
    with center.db.session() as s:
        _, _, rows = make_order(s, [Measured("K", 4.2, "autoverified"),
                                    Measured("NA", 150.0, "held", "H")])
        with pytest.raises(Conflict, match=rf"not: {rows[1].id} \(held\)"):
            release(s, rows, actor="worker")
        assert s.scalar(select(func.count()).select_from(OutboundMessage)) == 0
        assert rows[0].message_id is None


def test_send_rejection_tells_the_site_why(env_center: Center) -> None:
    center = env_center
    his = SiteReceiver().start()
    try:
        make_site(center, "county-a", hl7_port=his.port)
        with center.db.session() as s:
            order, specimen, _ = make_order(s, [Measured("K", None, "rejected"),
                                                   Measured("NA", None, "rejected")])
            specimen.rejection_code, specimen.rejection_note = "hemolysed", "H index 310"
            message = send_rejection(s, specimen, actor="tech-1")
            assert message is not None
            assert message.kind == "lab-rejection"
            body = message.body
            assert send_rejection(s, specimen, actor="tech-1") is None  # told once
            job_id = s.scalar(select(Delivery.job_id).where(
                Delivery.message_id == message.id))
            assert s.get(LabOrder, order.id).state == "resulted"  # type: ignore[union-attr]
            assert {r.message_id for r in s.scalars(select(LabResult).where(
                LabResult.order_id == order.id))} == {message.id}
        segments = body.split("\r")
        assert [seg.split("|")[11] for seg in segments if seg.startswith("OBX")] == ["X", "X"]
        assert [seg.split("|")[25] for seg in segments if seg.startswith("OBR")] == ["X"]
        assert (f"NTE|1|L|Specimen {specimen.accession} rejected (hemolysed): H index 310"
                in segments)
        assert job_id is not None
        assert jobs.execute(center.db, job_id) == "succeeded"
        assert [m.raw for m in his.received()] == [body]
    finally:
        his.stop()


def test_an_order_taken_in_signed_and_sent_to_the_site_receiver(env_center: Center) -> None:
    """The whole results leg on a real order: taken in by lab.orders, measured, held,
    signed by a reviewer, released and received by the county site's HL7 endpoint
    (devkit.hl7_site), whose ACK lands on the message."""
    center = env_center
    with SiteReceiver() as site:
        make_site(center, "county-a", hl7_port=site.port)
        with center.db.session() as s:
            issue_key(s, center.settings, reader_id="rev.e2e", display_name="Reviewer",
                      passphrase=PASSPHRASE, actor="test")
            order = accept_order(s, OrderRequest(
                site_id="county-a", placer_order_number="HIS-7781", patient_id="P-42",
                patient_name="李^四", sex="F", birth_date="19700505", visit_number="V-3",
                ordering_provider="Dr. Zhou", priority="routine",
                specimens=(SpecimenRequest(
                    site_specimen_id="T1", specimen_type="serum", collected_at=T0,
                    condition="room", spun=True, tests=("K", "CREA")),)),
                source="hl7", actor="test")
            rows = list(s.scalars(select(LabResult).where(LabResult.order_id == order.id)
                                  .order_by(LabResult.test_code)))
            for row, value, flag in zip(rows, (150.0, 5.8), ("H", "H"), strict=True):
                row.value, row.value_text, row.abnormal_flag = value, str(value), flag
                row.measured_at, row.state = T0 + timedelta(hours=3), "held"
            ids = [r.id for r in rows]
        with center.db.session() as s:
            sign_results(s, center.settings, ids, reader_id="rev.e2e", passphrase=PASSPHRASE)
            message_id = s.scalar(select(LabResult.message_id).where(LabResult.id == ids[0]))
            job_id = s.scalar(select(Delivery.job_id).where(Delivery.message_id == message_id))
        assert job_id is not None
        assert jobs.execute(center.db, job_id) == "succeeded"
        [got] = site.received()
        assert got.message_type.startswith("ORU^R01")
        assert "14682-9^Creatinine" in got.raw and "2823-3^Potassium" in got.raw
        assert "|HIS-7781|" in got.raw
        with center.db.session() as s:
            message = s.get(OutboundMessage, message_id)
            assert message is not None and got.control_id == message.control_id
            assert message.ack_code == "AA" and message.acked_at is not None
            assert s.get(LabOrder, order.id).state == "resulted"  # type: ignore[union-attr]
