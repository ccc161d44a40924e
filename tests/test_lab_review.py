"""The lab reviewers' worklist and their decisions: order, context, reasons, transitions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from lab_review_support import T0, Measured, make_order, make_run, make_site
from sqlalchemy import select
from sqlalchemy.orm import Session

from conftest import Center
from core import audit
from core.errors import Conflict, InvalidInput, InvalidTransition, NotFound
from core.models import AuditRecord, LabOrder, LabResult, OutboundMessage
from lab.results_out import release
from lab.review import held_worklist, result_detail, review

QC_HOLD = "QC reject on CHEM1 run R9: 1-3s"


def _actions(s: Session, result_id: int) -> list[str]:
    return list(s.scalars(select(AuditRecord.action).where(
        AuditRecord.object_type == "lab_result", AuditRecord.object_id == str(result_id))
        .order_by(AuditRecord.seq)))


def test_worklist_critical_first_then_oldest_with_context(center: Center) -> None:
    make_site(center, "county-a")
    make_site(center, "county-b")
    with center.db.session() as s:
        run = make_run(s, {"K": {"status": "reject", "rules": ["1-3s"]},
                           "NA": {"status": "accept", "rules": []}})
        # The patient's earlier released potassium values (the delta history).
        make_order(s, [Measured("K", 4.0, "verified", measured_at=T0 - timedelta(days=3))],
                   visit="V0", collected_at=T0 - timedelta(days=3))
        make_order(s, [Measured("K", 4.4, "autoverified", measured_at=T0 - timedelta(days=1))],
                   visit="V0", collected_at=T0 - timedelta(days=1))
        _, _, old = make_order(s, [Measured("NA", 150.0, "held", "H",
                                            measured_at=T0 + timedelta(minutes=5))])
        _, spec, new = make_order(
            s, [Measured("K", 5.9, "held", "H", qc_hold=QC_HOLD, rules=("qc-hold", "delta"),
                         measured_at=T0 + timedelta(minutes=30))],
            run=run, hil={"H": 80}, hold_reason="")
        _, _, crit = make_order(s, [Measured("K", 6.9, "held", "HH", critical=True,
                                             rules=("critical",),
                                             measured_at=T0 + timedelta(minutes=50))],
                                patient_id="P002")
        _, _, other_site = make_order(s, [Measured("K", 3.0, "held", "L",
                                                   measured_at=T0)], site_id="county-b",
                                      patient_id="P009")
        make_order(s, [Measured("K", 4.1, "autoverified")])  # not held: not listed
        ids = {"old": old[0].id, "new": new[0].id, "crit": crit[0].id,
               "b": other_site[0].id}
        accession = spec.accession

        items = held_worklist(s, site_ids=None)
        assert [i["id"] for i in items] == [ids["crit"], ids["b"], ids["old"], ids["new"]]
        mine = held_worklist(s, site_ids=frozenset({"county-a"}))
        assert [i["id"] for i in mine] == [ids["crit"], ids["old"], ids["new"]]
        assert held_worklist(s, site_ids=frozenset()) == []
        assert [i["id"] for i in held_worklist(s, site_ids=None, limit=1)] == [ids["crit"]]

        k = next(i for i in items if i["id"] == ids["new"])
        assert [h["value"] for h in k["history"]] == [4.4, 4.0]  # newest first
        assert k["qc"] == {"status": "reject", "rules": ["1-3s"]}
        assert k["qc_hold"] == QC_HOLD
        assert k["hil"] == {"H": 80}
        assert k["accession"] == accession
        assert [r["rule"] for r in k["rules_fired"]] == ["qc-hold", "delta"]
        assert k["test_name"] == "Potassium"
        na = next(i for i in items if i["id"] == ids["old"])
        assert na["history"] == [] and na["qc"] is None

        detail = result_detail(s, ids["new"])
        assert detail["history"] == k["history"]
        assert detail["signature"] is None and detail["message"] is None
        with pytest.raises(NotFound):
            result_detail(s, 99999)


def test_review_actions_need_a_reason_and_a_valid_transition(center: Center) -> None:
    make_site(center, "county-a")
    with center.db.session() as s:
        run = make_run(s, {"K": {"status": "reject", "rules": ["1-3s"]}})
        order, _, rows = make_order(s, [
            Measured("K", 5.9, "held", "H", qc_hold=QC_HOLD),
            Measured("NA", 150.0, "held", "H"),
            Measured("CL", 101.0, "autoverified"),
            Measured("GLU", 5.0, "held"),
        ], run=run)
        k, na, cl, glu = (r.id for r in rows)
        order_id = order.id

    with center.db.session() as s:
        for bad in ("", "   "):
            with pytest.raises(InvalidInput, match="a reason is required"):
                review(s, k, "release", actor="rev-1", reason=bad)
        with pytest.raises(InvalidInput, match="unknown review action 'approve'"):
            review(s, k, "approve", actor="rev-1", reason="fine")
        with pytest.raises(NotFound):
            review(s, 99999, "rerun", actor="rev-1", reason="x")
        # Releasing a QC hold where there is none, or on a result not held.
        with pytest.raises(Conflict, match="no QC hold"):
            review(s, na, "release", actor="rev-1", reason="looks fine")
        with pytest.raises(Conflict, match="only a held result"):
            review(s, cl, "release", actor="rev-1", reason="looks fine")
        # An autoverified result cannot be rejected (only rerun: a corrected value).
        with pytest.raises(InvalidTransition, match="autoverified -> rejected"):
            review(s, cl, "reject", actor="rev-1", reason="wrong")

    with center.db.session() as s:
        released = review(s, k, "release", actor="rev-1",
                          reason="control material past expiry; patient K confirmed by ISE")
        assert released.state == "held" and released.qc_hold == ""
        assert released.review_action == "release" and released.reviewed_by == "rev-1"
        assert _actions(s, k) == ["lab.review", "lab.qc_release"]
        qc = s.scalar(select(AuditRecord).where(AuditRecord.action == "lab.qc_release"))
        assert qc is not None and qc.detail["qc_hold"] == QC_HOLD
        # A second release finds nothing to release.
        with pytest.raises(Conflict, match="no QC hold"):
            review(s, k, "release", actor="rev-1", reason="again")

        rerun = review(s, na, "rerun", actor="rev-1", reason="delta check: rerun")
        assert rerun.state == "rerun"
        with pytest.raises(InvalidTransition, match="rerun -> rerun"):
            review(s, na, "rerun", actor="rev-1", reason="twice")

        rejected = review(s, glu, "reject", actor="rev-1", reason="clotted sample")
        assert rejected.state == "rejected"
        message = s.get(OutboundMessage, rejected.message_id)
        assert message is not None and message.kind == "lab-rejection"
        assert "NTE|1|L|Result rejected: clotted sample" in message.body
        with pytest.raises(InvalidTransition, match="rejected -> rerun"):
            review(s, glu, "rerun", actor="rev-1", reason="too late")
        assert s.get(LabOrder, order_id).state == "in_progress"  # type: ignore[union-attr]
        assert audit.verify(s).ok

    with center.db.session() as s:
        # The refusals changed nothing: the NA result was only rerun once.
        row = s.get(LabResult, na)
        assert row is not None and row.review_reason == "delta check: rerun"
        assert _actions(s, na) == ["lab.review"]
        assert _actions(s, cl) == []


def test_rerun_of_a_released_result_goes_out_as_a_correction(center: Center) -> None:
    make_site(center, "county-a")
    with center.db.session() as s:
        _, _, rows = make_order(s, [Measured("K", 6.8, "autoverified", "HH", critical=True),
                                    Measured("NA", 140.0, "autoverified")])
        k, na = rows
        [first] = release(s, rows, actor="worker")
        assert "|HH|||F|" in first.body
        k.signed_by, k.content_hash, k.canonical = "rev-1", "ab" * 32, "{}"
        s.flush()

        rerun = review(s, k.id, "rerun", actor="rev-1",
                       reason="potassium implausible with the ECG; hemolysis suspected")
        assert rerun.state == "rerun"
        assert (rerun.message_id, rerun.signed_by, rerun.content_hash, rerun.canonical) == (
            None, None, None, None)
        record = s.scalar(select(AuditRecord).where(AuditRecord.action == "lab.review",
                                                    AuditRecord.object_id == str(k.id)))
        assert record is not None
        assert record.detail["superseded"]["message_id"] == first.id
        assert record.detail["superseded"]["content_hash"] == "ab" * 32
        assert record.detail["superseded"]["value"] == 6.8

        # The new measurement, autoverified (as lab.results_in and the rules leave it).
        k.state, k.value, k.value_text, k.abnormal_flag, k.critical = (
            "autoverified", 4.9, "4.9", "", False)
        s.flush()
        [second] = release(s, [k, na], actor="worker")  # NA was sent already: not again
        obx = [seg.split("|") for seg in second.body.split("\r") if seg.startswith("OBX")]
        assert [(o[5], o[11]) for o in obx] == [("4.9", "C")]
        assert [seg.split("|")[25] for seg in second.body.split("\r")
                if seg.startswith("OBR")] == ["C"]
        assert na.message_id == first.id
