"""The lab API's happy paths with real rows in a real database: the reviewers' worklist
(critical first, then oldest; QC status with its Westgard rule, HIL, rules fired, delta
history), a result's detail, releasing a QC hold, signing several results at once
(each its own signature, sent back to the site), the Levey-Jennings chart as JSON and
PNG, critical values acknowledged with read-back, the specimen and box timelines, the
label PDF, a FHIR order in and the DiagnosticReport out, the visit's cumulative PDF and
the critical-value dashboard.

The world (two county sites, orders, specimens, results, a run whose potassium
control failed, critical notices, a shipment box, a control lot) is inserted as the
lab's services would leave it, so that these tests check the web edge; the services
run for real behind it (review, signing with a key issued through ``rdc keys``,
critical, custody, labels, FHIR, PDF).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from lab_review_support import Measured, make_order, make_run, make_site
from PIL import Image
from sqlalchemy import select

from browser_support import PASSPHRASE, issue_key
from conftest import Center, signed_in_client
from core.models import (
    AuditRecord,
    LabControlResult,
    LabCriticalNotice,
    LabInboundMessage,
    LabOrder,
    LabResult,
    LabShipment,
    LabSpecimen,
)
from lab import custody, qc
from lab.fhir_in import CATALOG_SYSTEM, LOINC

NOW = datetime.now(UTC).replace(microsecond=0)
HOLD = "QC reject on CHEM1 run R-QC: 1-3s"


@dataclass
class LabWorld:
    """Ids of the rows each test reads (``a_*`` at county-a, ``b_*`` at county-b)."""

    c: Center
    ids: dict[str, Any] = field(default_factory=dict)

    def client(self, username: str, roles: list[str], sites: list[str] | None) -> TestClient:
        client: TestClient = signed_in_client(self.c, username, roles, sites)
        return client


def _notice(s: Any, result: LabResult, *, minutes_ago: int) -> LabCriticalNotice:
    at = NOW - timedelta(minutes=minutes_ago)
    row = LabCriticalNotice(result_id=result.id, site_id=result.site_id, state="notified",
                            result_at=at, notified_at=at + timedelta(seconds=20), tier=0,
                            next_escalation_at=at + timedelta(minutes=5),
                            steps=[{"tier": 0, "at": at.isoformat(), "channel": "in-app",
                                    "to": result.site_id, "outcome": "listed"}])
    s.add(row)
    s.flush()
    return row


@pytest.fixture
def lab_world(env_center: Center) -> Iterator[LabWorld]:
    """Two county sites.  At county-a: an order whose K is held by a failing control
    (1-3s) with hemolysis indices and a previous released K of the same patient, NA held
    by a delta rule, GLU autoverified; a critical K (HH) held with its open notice; a
    packed box with a custody trail.  At county-b: a held K and a critical notice."""
    c = env_center
    make_site(c, "county-a")
    make_site(c, "county-b")
    w = LabWorld(c)
    with c.db.session() as s:
        run = make_run(s, {"K": {"status": "reject", "rules": ["1-3s"]},
                           "NA": {"status": "accept", "rules": []}}, code="R-QC")
        # The patient's earlier, released potassium (the delta history).
        make_order(s, [Measured("K", 4.2, state="verified",
                                measured_at=NOW - timedelta(days=20))],
                   collected_at=NOW - timedelta(days=20, hours=2))
        order, spec, rows = make_order(
            s, [Measured("K", 5.9, flag="H", qc_hold=HOLD, rules=("qc-hold",),
                         measured_at=NOW - timedelta(hours=3)),
                Measured("NA", 128.0, flag="L", rules=("delta-check",),
                         measured_at=NOW - timedelta(hours=3)),
                Measured("GLU", 5.1, state="autoverified",
                         measured_at=NOW - timedelta(hours=3))],
            run=run, hil={"H": 150, "I": 1, "L": 5}, collected_at=NOW - timedelta(hours=5))
        k, na, glu = rows
        _o2, spec2, (crit,) = make_order(
            s, [Measured("K", 6.9, flag="HH", critical=True, rules=("critical",),
                         measured_at=NOW - timedelta(hours=1))],
            patient_id="P002", patient_name="DOE^JANE", visit="V2",
            collected_at=NOW - timedelta(hours=2))
        notice_a = _notice(s, crit, minutes_ago=50)
        ob, spec_b, (kb,) = make_order(
            s, [Measured("K", 5.5, flag="H", rules=("range",),
                         measured_at=NOW - timedelta(hours=6))],
            site_id="county-b", patient_id="PB1", patient_name="ROE^B",
            collected_at=NOW - timedelta(hours=7))
        _ob2, _sb2, (crit_b,) = make_order(
            s, [Measured("K", 7.1, flag="HH", critical=True, rules=("critical",))],
            site_id="county-b", patient_id="PB2")
        notice_b = _notice(s, crit_b, minutes_ago=30)
        box_a = LabShipment(site_id="county-a", box_code="BOX-A1", condition="room",
                            state="received", temperature_log=[
                                [(NOW - timedelta(hours=4)).isoformat(), 21.0],
                                [(NOW - timedelta(hours=3)).isoformat(), 22.5]])
        box_b = LabShipment(site_id="county-b", box_code="BOX-B1", condition="room")
        s.add_all([box_a, box_b])
        s.flush()
        spec.shipment_id, spec_b.shipment_id = box_a.id, box_b.id
        for step, hours, where in (("collected", 5, "county-a ward 3"),
                                   ("packed", 4.5, "county-a lab"),
                                   ("received", 3.5, "center"),
                                   ("accessioned", 3.4, "center")):
            custody.record_event(s, step=step, actor="tech.a", specimen=spec,
                                 shipment=box_a, location=where, temperature_c=21.5,
                                 at=NOW - timedelta(hours=hours))
        custody.record_event(s, step="packed", actor="tech.a", shipment=box_a,
                             location="county-a lab", at=NOW - timedelta(hours=4.5))
        lot = qc.add_lot(s, analyzer_id="CHEM1", lot="LOT-K1", test_code="K", level=1,
                         mean=4.0, sd=0.1, actor="test")
        for i, (value, status, rules) in enumerate([(4.05, "accept", []),
                                                    (3.95, "accept", []),
                                                    (4.35, "reject", ["1-3s"])]):
            r = run if i == 2 else make_run(s, {"K": {"status": status, "rules": rules}})
            s.add(LabControlResult(lot_id=lot.id, run_id=r.id, value=value,
                                   z=round((value - 4.0) / 0.1, 3), status=status,
                                   rules=rules, measured_at=NOW - timedelta(hours=10 - i)))
        s.flush()
        w.ids = {"k": k.id, "na": na.id, "glu": glu.id, "crit": crit.id, "kb": kb.id,
                 "crit_b": crit_b.id, "notice_a": notice_a.id, "notice_b": notice_b.id,
                 "order_a": order.id, "order_b": ob.id, "acc_a": spec.accession,
                 "acc_crit": spec2.accession, "acc_b": spec_b.accession,
                 "box_a": "BOX-A1", "box_b": "BOX-B1", "patient_a": order.patient_id,
                 "visit_a": order.visit_number}
    yield w


def _audit(c: Center, action: str) -> list[AuditRecord]:
    with c.db.session() as s:
        return list(s.scalars(select(AuditRecord).where(AuditRecord.action == action)))


def test_worklist_detail_and_qc_release(lab_world: LabWorld) -> None:
    w = lab_world
    reviewer = w.client("lab.all", ["lab_reviewer"], None)
    held = reviewer.get("/api/lab/held")
    assert held.status_code == 200, held.text
    rows = held.json()["results"]
    ids = [r["id"] for r in rows]
    # Critical first, then the oldest: county-a's critical K, then B's 6 h-old K, then
    # A's two 3 h-old results (and B's critical K, with no measurement time, among them).
    assert ids[0] in (w.ids["crit"], w.ids["crit_b"]) and ids[1] in (w.ids["crit"],
                                                                     w.ids["crit_b"])
    assert ids[2:] == [w.ids["kb"], w.ids["k"], w.ids["na"]]
    assert w.ids["glu"] not in ids  # autoverified: not held
    k = next(r for r in rows if r["id"] == w.ids["k"])
    assert k["qc"] == {"status": "reject", "rules": ["1-3s"]}
    assert k["qc_hold"] == HOLD
    assert k["hil"] == {"H": 150, "I": 1, "L": 5}
    assert [f["rule"] for f in k["rules_fired"]] == ["qc-hold"]
    assert [p["value"] for p in k["history"]] == [4.2]

    # A site A reviewer sees site A's held results only.
    reviewer_a = w.client("lab.a", ["lab_reviewer"], ["county-a"])
    only_a = {r["site_id"] for r in reviewer_a.get("/api/lab/held").json()["results"]}
    assert only_a == {"county-a"}

    detail = reviewer.get(f"/api/lab/results/{w.ids['k']}")
    assert detail.status_code == 200, detail.text
    d = detail.json()
    assert (d["test_code"], d["value"], d["accession"]) == ("K", 5.9, w.ids["acc_a"])
    assert d["signature"] is None and d["review"]["action"] == ""
    assert len(_audit(w.c, "lab.result_view")) == 1

    # Release the QC hold, with a reason: audited, the result still held for signing.
    r = reviewer.post(f"/api/lab/results/{w.ids['k']}/review",
                      json={"action": "release", "reason": "control lot mislabelled"})
    assert r.status_code == 200, r.text
    assert r.json()["qc_hold"] == "" and r.json()["state"] == "held"
    assert r.json()["review"]["reason"] == "control lot mislabelled"
    released = _audit(w.c, "lab.qc_release")
    assert len(released) == 1 and released[0].actor == "lab.all"
    # A second release: nothing to release (409), and a decision needs a reason (422).
    again = reviewer.post(f"/api/lab/results/{w.ids['k']}/review",
                          json={"action": "release", "reason": "again"})
    assert again.status_code == 409, again.text
    no_reason = reviewer.post(f"/api/lab/results/{w.ids['na']}/review",
                              json={"action": "rerun", "reason": ""})
    assert no_reason.status_code == 422
    rerun = reviewer.post(f"/api/lab/results/{w.ids['na']}/review",
                          json={"action": "rerun", "reason": "delta: repeat"})
    assert rerun.status_code == 200 and rerun.json()["state"] == "rerun"


def test_sign_several_results_at_once(lab_world: LabWorld) -> None:
    w = lab_world
    issue_key(w.c, "lab.signer", "Lab Signer")
    signer = w.client("lab.signer", ["lab_reviewer"], None)
    # Still under its QC hold, K cannot be signed: nothing is signed.
    held_k = signer.post("/api/lab/sign", json={"result_ids": [w.ids["na"], w.ids["k"]],
                                                 "passphrase": PASSPHRASE})
    assert held_k.status_code in (409, 422), held_k.text
    with w.c.db.session() as s:
        assert s.get(LabResult, w.ids["na"]).signed_at is None  # type: ignore[union-attr]
    wrong = signer.post("/api/lab/sign", json={"result_ids": [w.ids["na"]],
                                                "passphrase": "not it"})
    assert wrong.status_code in (401, 403, 409, 422), wrong.text
    assert signer.post(f"/api/lab/results/{w.ids['k']}/review",
                       json={"action": "release", "reason": "lot mix-up"}).status_code == 200
    r = signer.post("/api/lab/sign", json={"result_ids": [w.ids["na"], w.ids["k"]],
                                            "passphrase": PASSPHRASE})
    assert r.status_code == 200, r.text
    out = r.json()["results"]
    assert {x["id"] for x in out} == {w.ids["na"], w.ids["k"]}
    assert all(x["state"] == "verified" and x["signature"]["by"] == "lab.signer"
               for x in out)
    with w.c.db.session() as s:
        rows = [s.get(LabResult, i) for i in (w.ids["na"], w.ids["k"])]
        hashes = {r.content_hash for r in rows if r is not None}
        assert len(hashes) == 2  # each result its own signature
        assert all(r is not None and r.envelope and r.message_id for r in rows)
    # Signed, no longer held.
    ids = [x["id"] for x in signer.get("/api/lab/held").json()["results"]]
    assert w.ids["k"] not in ids and w.ids["na"] not in ids


def test_qc_chart_json_and_png(lab_world: LabWorld) -> None:
    reviewer = lab_world.client("lab.qc", ["lab_reviewer"], None)
    q = {"analyzer": "CHEM1", "test": "K", "level": 1}
    r = reviewer.get("/api/lab/qc/chart", params=q)
    assert r.status_code == 200, r.text
    data = r.json()
    assert (data["lot"], data["mean"], data["sd"]) == ("LOT-K1", 4.0, 0.1)
    assert [p["z"] for p in data["points"]] == [0.5, -0.5, 3.5]
    assert data["points"][-1]["rules"] == ["1-3s"] and data["points"][-1]["run_code"] == "R-QC"
    png = reviewer.get("/api/lab/qc/chart.png", params=q)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size[0] >= 400
    assert reviewer.get("/api/lab/qc/chart", params={**q, "level": 2}).status_code == 404
    bad = reviewer.get("/api/lab/qc/chart", params={**q, "test": "K\n"})
    assert bad.status_code == 422


def test_critical_ack_with_readback(lab_world: LabWorld) -> None:
    w = lab_world
    clerk = w.client("clerk.a", ["site_user"], ["county-a"])
    listed = clerk.get("/api/lab/critical")
    assert listed.status_code == 200, listed.text
    notices = listed.json()["notices"]
    assert [n["id"] for n in notices] == [w.ids["notice_a"]]  # its own site's only
    assert notices[0]["value"] == 6.9 and notices[0]["state"] == "notified"
    # A wrong read-back: refused, recorded, the notice stays open.
    wrong = clerk.post(f"/api/lab/critical/{w.ids['notice_a']}/ack",
                       json={"name": "Nurse Li", "readback": "9.6"})
    assert wrong.status_code == 409, wrong.text
    assert len(_audit(w.c, "lab.critical_readback_mismatch")) == 1
    ok = clerk.post(f"/api/lab/critical/{w.ids['notice_a']}/ack",
                    json={"name": "Nurse Li", "readback": "6.9 mmol/L"})
    assert ok.status_code == 200, ok.text
    body = ok.json()
    assert (body["state"], body["ack_name"], body["ack_by"], body["ack_matches"]) == (
        "acknowledged", "Nurse Li", "clerk.a", True)
    assert clerk.get("/api/lab/critical", params={"open_only": True}).json()["notices"] == []

    # The dashboard: per site, result -> notification -> acknowledgement.
    reviewer = w.client("lab.dash", ["lab_reviewer"], None)
    dash = reviewer.get("/api/lab/dashboard")
    assert dash.status_code == 200, dash.text
    sites = {row["site_id"]: row for row in dash.json()["sites"]}
    assert sites["county-a"]["acknowledged"] == 1
    assert sites["county-a"]["median_result_to_notification_s"] == 20.0
    assert sites["county-b"]["open"] == 1
    admin = w.client("admin.lab", ["admin"], None)
    assert admin.get("/api/lab/dashboard").status_code == 200


def test_custody_timeline_box_and_label(lab_world: LabWorld) -> None:
    w = lab_world
    clerk = w.client("clerk.t", ["site_user"], ["county-a"])
    t = clerk.get(f"/api/lab/specimens/{w.ids['acc_a']}/timeline")
    assert t.status_code == 200, t.text
    body = t.json()
    assert body["site_id"] == "county-a"
    assert [e["step"] for e in body["events"]] == ["collected", "packed", "received",
                                                   "accessioned"]
    assert body["events"][0]["location"] == "county-a ward 3"
    assert body["events"][0]["temperature_c"] == 21.5
    box = clerk.get("/api/lab/boxes/BOX-A1")
    assert box.status_code == 200, box.text
    b = box.json()
    assert b["box_code"] == "BOX-A1" and [e["step"] for e in b["events"]] == ["packed"]
    assert [x["accession"] for x in b["specimens"]] == [w.ids["acc_a"]]
    assert [p["temperature_c"] for p in b["temperature_log"]] == [21.0, 22.5]
    label = clerk.get(f"/api/lab/specimens/{w.ids['acc_a']}/label.pdf")
    assert label.status_code == 200 and label.content.startswith(b"%PDF")
    assert "no-store" in label.headers["cache-control"]


def _bundle() -> dict[str, Any]:
    def request(n: int, coding: dict[str, str]) -> dict[str, Any]:
        return {"fullUrl": f"urn:uuid:sr-{n}", "resource": {
            "resourceType": "ServiceRequest", "id": f"sr{n}", "status": "active",
            "intent": "order", "priority": "routine", "requisition": {"value": "REQ-WEB-1"},
            "identifier": [{"value": f"SR-{n}"}], "code": {"coding": [coding]},
            "subject": {"reference": "Patient/p1"}, "requester": {"display": "Dr WANG Li"},
            "encounter": {"identifier": {"value": "VISIT-9"}},
            "specimen": [{"reference": "Specimen/s1"}]}}
    return {"resourceType": "Bundle", "type": "collection",
            "identifier": {"value": "BUNDLE-WEB-1"}, "entry": [
                {"fullUrl": "urn:uuid:p1", "resource": {
                    "resourceType": "Patient", "id": "p1",
                    "identifier": [{"system": "urn:county-a:mrn", "value": "P-900"}],
                    "name": [{"family": "CHEN", "given": ["Mei"]}],
                    "birthDate": "1990-02-14", "gender": "female"}},
                {"fullUrl": "urn:uuid:s1", "resource": {
                    "resourceType": "Specimen", "id": "s1",
                    "identifier": [{"value": "TUBE-W1"}],
                    "collection": {"collectedDateTime": NOW.isoformat()}}},
                request(1, {"system": LOINC, "code": "2823-3"}),
                request(2, {"system": CATALOG_SYSTEM, "code": "NA"})]}


def test_fhir_order_in_report_out_and_visit_pdf(lab_world: LabWorld) -> None:
    w = lab_world
    clerk = w.client("clerk.o", ["site_user"], ["county-a"])
    r = clerk.post("/api/lab/orders/fhir", json=_bundle())
    assert r.status_code == 201, r.text
    created = r.json()
    assert len(created["accessions"]) == 1 and created["accessions"][0].startswith("L")
    with w.c.db.session() as s:
        order = s.get(LabOrder, created["order_id"])
        assert order is not None and order.site_id == "county-a" and order.source == "fhir"
        codes = set(s.scalars(select(LabResult.test_code)
                              .where(LabResult.order_id == order.id)))
        assert codes == {"K", "NA"}
        kept = s.scalar(select(LabInboundMessage).where(
            LabInboundMessage.order_id == order.id))
        assert kept is not None and kept.channel == "fhir" and kept.outcome == "AA"
    # The same order again: a duplicate, refused (409) and kept as a refusal.
    dup = clerk.post("/api/lab/orders/fhir", json=_bundle())
    assert dup.status_code == 409, dup.text
    bad = _bundle()
    bad["entry"][2]["resource"]["code"]["coding"][0]["code"] = "9999-9"
    refused = clerk.post("/api/lab/orders/fhir", json=bad)
    assert refused.status_code == 422 and "9999-9" in refused.text
    with w.c.db.session() as s:
        refusals = list(s.scalars(select(LabInboundMessage).where(
            LabInboundMessage.outcome == "AR")))
        assert len(refusals) == 2
        assert s.scalar(select(LabSpecimen).where(
            LabSpecimen.site_specimen_id == "TUBE-W1").offset(1)) is None
    assert len(_audit(w.c, "lab.fhir_order_refused")) == 2
    # Another site's order, or a site the account does not order for: refused.
    other = clerk.post("/api/lab/orders/fhir", params={"site": "county-b"}, json=_bundle())
    assert other.status_code == 403

    # Out: the order's DiagnosticReport, and the visit's cumulative PDF.
    report = clerk.get(f"/api/lab/orders/{w.ids['order_a']}/fhir")
    assert report.status_code == 200, report.text
    assert report.json()["resourceType"] == "DiagnosticReport"
    pdf = clerk.get("/api/lab/visits/report.pdf", params={
        "site": "county-a", "patient": w.ids["patient_a"], "visit": w.ids["visit_a"]})
    assert pdf.status_code == 200, pdf.text
    assert pdf.content.startswith(b"%PDF")
    assert len(_audit(w.c, "lab.report_view")) == 1


def test_site_user_sees_released_results_only(lab_world: LabWorld) -> None:
    w = lab_world
    clerk = w.client("clerk.r", ["site_user"], ["county-a"])
    released = clerk.get(f"/api/lab/results/{w.ids['glu']}")
    assert released.status_code == 200 and released.json()["state"] == "autoverified"
    assert clerk.get(f"/api/lab/results/{w.ids['k']}").status_code == 404  # held
    assert clerk.get("/api/lab/held").status_code == 403
