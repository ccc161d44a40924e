"""The lab center as the web app shows it: who may see which result, notice, specimen,
box and order, and the reviewers' and the sites' acts (review, sign, acknowledge).

Visibility: every lab object carries its site (a result, notice and order directly, a
specimen through its order, a box itself).  A caller sees the sites their account is
given (:meth:`UserContext.can_see_site`); another site's object is answered 404,
exactly as a missing one, so that its existence is not revealed.  Roles are checked by
the routes (:mod:`viewer.api.lab`); sites here, on every object, before any service
runs.  A county account (``site_user``) sees its results only once they are released
(autoverified or signed): a held value is the lab's work in progress.

The lab's rules are in its own package (:mod:`lab.review`, :mod:`lab.signing`,
:mod:`lab.critical`, :mod:`lab.custody`, ...); this module only finds the object,
checks its site and hands over.  Path parameters that name things (accessions, box
codes) are checked against a strict pattern first: nothing else reaches a query.
"""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from core import audit
from core.db import Database
from core.errors import Forbidden, InvalidInput, NotFound, RDCError
from core.models import (
    LabCriticalNotice,
    LabInboundMessage,
    LabOrder,
    LabResult,
    LabShipment,
    LabSpecimen,
)
from core.settings import Settings
from lab import critical, custody, fhir_in, fhir_out, labels, lj_chart, review, signing
from lab.cumulative_pdf import cumulative_pdf
from lab.states import RELEASED_RESULT_STATES
from viewer.auth import UserContext

#: A specimen's accession ("L" + digits, lab.orders) or a box's barcode: letters,
#: digits, "_" and "-", no dots or slashes; ``\Z`` so that a trailing newline is refused.
ACCESSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}\Z")
BOX_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
#: Patient and visit numbers as sites send them (PID-3, PV1-19).
IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._^-]{0,63}\Z")
SITE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}\Z")
TEST_CODE = re.compile(r"^[A-Z0-9]{1,16}\Z")
ANALYZER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,31}\Z")
#: The dashboard's default window.
DASHBOARD_DAYS = 30


def _now() -> datetime:
    return datetime.now(UTC)


def _checked(value: str, pattern: re.Pattern[str], what: str) -> str:
    if not pattern.match(value):
        raise InvalidInput(f"{what} {value[:40]!r} is not valid: letters, digits, '_' "
                           "and '-' only")
    return value


def site_scope(user: UserContext) -> frozenset[str] | None:
    """The sites the caller sees (None: every site), as the lab's services take them."""
    return None if user.all_sites else frozenset(user.site_ids)


def _site_user_only(user: UserContext) -> bool:
    """A county account without a lab role: sees released results only."""
    return not user.is_operator and "lab_reviewer" not in user.roles


# Objects, site-checked ------------------------------------------------------------------


def visible_result(s: Session, user: UserContext, result_id: int) -> LabResult:
    """The result if the caller may see it (a county account: released ones only);
    NotFound (404) otherwise."""
    row = s.get(LabResult, result_id)
    if row is None or not user.can_see_site(row.site_id):
        raise NotFound(f"lab result {result_id} not found")
    if _site_user_only(user) and row.state not in RELEASED_RESULT_STATES:
        raise NotFound(f"lab result {result_id} not found")
    return row


def visible_notice(s: Session, user: UserContext, notice_id: int) -> LabCriticalNotice:
    row = s.get(LabCriticalNotice, notice_id)
    if row is None or not user.can_see_site(row.site_id):
        raise NotFound(f"critical notice {notice_id} not found")
    return row


def visible_specimen(s: Session, user: UserContext,
                     accession: str) -> tuple[LabSpecimen, LabOrder]:
    _checked(accession, ACCESSION, "accession")
    found = s.execute(select(LabSpecimen, LabOrder)
                      .join(LabOrder, LabOrder.id == LabSpecimen.order_id)
                      .where(LabSpecimen.accession == accession)).first()
    if found is None or not user.can_see_site(found[1].site_id):
        raise NotFound(f"specimen {accession} not found")
    return found[0], found[1]


def visible_box(s: Session, user: UserContext, box_code: str) -> LabShipment:
    _checked(box_code, BOX_CODE, "box code")
    row = s.scalar(select(LabShipment).where(LabShipment.box_code == box_code))
    if row is None or not user.can_see_site(row.site_id):
        raise NotFound(f"box {box_code} not found")
    return row


def visible_order(s: Session, user: UserContext, order_id: int) -> LabOrder:
    row = s.get(LabOrder, order_id)
    if row is None or not user.can_see_site(row.site_id):
        raise NotFound(f"lab order {order_id} not found")
    return row


# Review and signing ----------------------------------------------------------------------


def held(s: Session, user: UserContext) -> dict[str, Any]:
    """The reviewers' worklist of the caller's sites (critical first, then oldest)."""
    return {"results": review.held_worklist(s, site_ids=site_scope(user))}


def result_detail(s: Session, user: UserContext, result_id: int) -> dict[str, Any]:
    visible_result(s, user, result_id)
    out = review.result_detail(s, result_id)
    audit.append(s, actor=user.username, action="lab.result_view", object_type="lab_result",
                 object_id=str(result_id), detail={})
    return out


def review_result(s: Session, user: UserContext, result_id: int, action: str,
                  reason: str) -> dict[str, Any]:
    visible_result(s, user, result_id)
    review.review(s, result_id, action, actor=user.username, reason=reason)
    return review.result_detail(s, result_id)


def sign(s: Session, settings: Settings, user: UserContext, result_ids: list[int], *,
         passphrase: str, key_id: int | None) -> dict[str, Any]:
    """Sign every result, each with its own signature, or none (another site's id among
    them is 404 and nothing is signed)."""
    if user.user_id is None:
        raise Forbidden("signing needs a signed-in reviewer, not the operator token")
    ids = list(dict.fromkeys(result_ids))
    for result_id in ids:
        visible_result(s, user, result_id)
    signed = signing.sign_results(s, settings, ids, reader_id=user.username,
                                  passphrase=passphrase, key_id=key_id, actor=user.username)
    return {"results": [review.result_detail(s, r.id) for r in signed]}


# QC ---------------------------------------------------------------------------------------


def _chart_args(analyzer: str, test: str, level: int) -> tuple[str, str, int]:
    return (_checked(analyzer, ANALYZER_ID, "analyzer"), _checked(test, TEST_CODE, "test"),
            level)


def qc_chart(s: Session, analyzer: str, test: str, level: int) -> dict[str, Any]:
    a, t, lv = _chart_args(analyzer, test, level)
    return lj_chart.chart_data(s, analyzer_id=a, test_code=t, level=lv)


def qc_chart_png(s: Session, analyzer: str, test: str, level: int) -> bytes:
    a, t, lv = _chart_args(analyzer, test, level)
    return lj_chart.render_png(lj_chart.chart_data(s, analyzer_id=a, test_code=t, level=lv))


# Critical values -----------------------------------------------------------------------------


def notices(s: Session, user: UserContext, open_only: bool) -> dict[str, Any]:
    return {"notices": critical.notices(s, site_ids=site_scope(user), open_only=open_only)}


def _notice_out(n: LabCriticalNotice) -> dict[str, Any]:
    return {"id": n.id, "result_id": n.result_id, "site_id": n.site_id, "state": n.state,
            "ack_by": n.ack_by, "ack_name": n.ack_name, "ack_readback": n.ack_readback,
            "ack_matches": n.ack_matches,
            "ack_at": n.ack_at.isoformat() if n.ack_at is not None else None}


def acknowledge(s: Session, user: UserContext, notice_id: int, *, name: str,
                readback: str) -> dict[str, Any]:
    """Acknowledge with read-back; a repeated acknowledgement is a 409 (the notice's
    state machine), a read-back that does not match the value too (lab.critical)."""
    visible_notice(s, user, notice_id)
    row = critical.acknowledge(s, notice_id, actor=user.username, name=name,
                               readback=readback)
    return _notice_out(row)


def dashboard(s: Session, user: UserContext, days: int) -> dict[str, Any]:
    since = _now() - timedelta(days=days)
    return {"since": since.isoformat(),
            "sites": critical.dashboard(s, site_ids=site_scope(user), since=since)}


# Specimens and boxes -----------------------------------------------------------------------


def specimen_timeline(s: Session, user: UserContext, accession: str) -> dict[str, Any]:
    spec, order = visible_specimen(s, user, accession)
    return {"accession": spec.accession, "site_id": order.site_id, "state": spec.state,
            "hold_reason": spec.hold_reason,
            "events": custody.specimen_timeline(s, spec.id)}


def box(s: Session, user: UserContext, box_code: str) -> dict[str, Any]:
    row = visible_box(s, user, box_code)
    return custody.box_timeline(s, row.id)


def label(s: Session, user: UserContext, accession: str) -> bytes:
    spec, order = visible_specimen(s, user, accession)
    tests = list(s.scalars(select(LabResult.test_code).where(LabResult.specimen_id == spec.id)
                           .order_by(LabResult.id)))
    return labels.label_pdf([spec], {order.id: order}, tests={spec.id: tests})


# Orders and reports --------------------------------------------------------------------------


def _bundle_site(user: UserContext, site: str | None) -> str:
    """The site the bundle is ordered for: named, or the account's only site."""
    if site is None:
        if user.all_sites or len(user.site_ids) != 1:
            raise InvalidInput("name the ordering site: ?site=<site id>")
        site = next(iter(user.site_ids))
    _checked(site, SITE_ID, "site")
    if not user.can_see_site(site):
        raise Forbidden(f"this account does not order for site {site}")
    return site


def order_fhir(db: Database, user: UserContext, bundle: dict[str, Any],
               site: str | None) -> dict[str, Any]:
    """Accept a FHIR ServiceRequest bundle as an order of the site
    (:func:`lab.fhir_in.accept_bundle` keeps it as an inbound message).  A refusal is
    kept too, in a transaction of its own since the order's rolls back, and audited."""
    site_id = _bundle_site(user, site)
    try:
        with db.session() as s:
            order = fhir_in.accept_bundle(s, bundle, site_id=site_id, actor=user.username)
            accessions = list(s.scalars(select(LabSpecimen.accession)
                                        .where(LabSpecimen.order_id == order.id)
                                        .order_by(LabSpecimen.id)))
            return {"order_id": order.id, "filler_order_number": order.filler_order_number,
                    "accessions": accessions}
    except RDCError as e:
        control_id = f"refused-{uuid.uuid4()}"
        with db.session() as s:
            s.add(LabInboundMessage(sender=site_id, channel="fhir",
                                    message_type="ServiceRequest", control_id=control_id,
                                    outcome="AR", reason=str(e)[:2000],
                                    raw=json.dumps(bundle, ensure_ascii=False)[:1_000_000]))
            audit.append(s, actor=user.username, action="lab.fhir_order_refused",
                         object_type="lab_inbound", object_id=control_id,
                         detail={"site_id": site_id, "reason": str(e)[:500]})
        raise


def order_fhir_report(s: Session, user: UserContext, order_id: int) -> bytes:
    """The order's DiagnosticReport as FHIR JSON."""
    visible_order(s, user, order_id)
    return json.dumps(fhir_out.diagnostic_report(s, order_id), ensure_ascii=False).encode()


def visit_report(s: Session, user: UserContext, *, site: str, patient: str,
                 visit: str) -> bytes:
    _checked(site, SITE_ID, "site")
    _checked(patient, IDENTIFIER, "patient")
    _checked(visit, IDENTIFIER, "visit")
    if not user.can_see_site(site):
        raise NotFound("no such visit")
    pdf = cumulative_pdf(s, site_id=site, patient_id=patient, visit_number=visit)
    audit.append(s, actor=user.username, action="lab.report_view", object_type="lab_visit",
                 object_id=f"{site}/{patient}/{visit}", detail={})
    return pdf
