"""FHIR orders in: a Bundle of ServiceRequests (with their Patient and Specimens) read
into the same :class:`OrderRequest` an HL7 order becomes.

The bundle is validated with ``fhir.resources`` first (its R4B models: R4's
ServiceRequest, Patient and Specimen are unchanged in R4B), so a structurally wrong
resource is refused with pydantic's own location of the error; the meaning (one
patient, one placer order, known tests) is checked here, each refusal naming the element.

Mapping (one ServiceRequest per test):

- placer order number: ``ServiceRequest.requisition.value`` (the group all the bundle's
  requests share), else each request's first ``identifier.value`` (then all equal);
- test: ``ServiceRequest.code.coding``, LOINC (``http://loinc.org``) or the catalog's
  own code (system :data:`CATALOG_SYSTEM`); ``priority`` stat/asap/urgent = stat;
  ``requester.display`` the ordering provider; ``encounter.identifier.value`` the visit;
- patient: ``Patient.identifier[0].value``, ``name[0]`` (family^given), ``birthDate``,
  ``gender``;
- tube: the request's ``specimen`` reference: ``Specimen.identifier[0].value`` (the
  site's tube id), ``collection.collectedDateTime``, ``condition`` codings of HL7 table
  0493 (``ROOM``, ``COOL`` refrigerated, ``FROZ`` frozen, ``CFU`` centrifuged).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from fhir.resources.R4B.bundle import Bundle
from pydantic import ValidationError
from sqlalchemy.orm import Session

from core.errors import InvalidInput
from core.models import LabInboundMessage, LabOrder
from lab.catalog import Catalog, Test, get_catalog
from lab.orders import OrderRequest, SpecimenRequest, accept_order

LOINC = "http://loinc.org"
#: The coding system of the catalog's own test codes ("K", "NA", ...).
CATALOG_SYSTEM = "urn:rdc:lab-test"
V2_0493 = "http://terminology.hl7.org/CodeSystem/v2-0493"
_CONDITION = {"ROOM": "room", "COOL": "refrigerated", "FROZ": "frozen"}
_STAT = {"stat", "asap", "urgent"}


def _validated(bundle: dict[str, Any]) -> Any:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise InvalidInput("the body is not a FHIR Bundle (resourceType must be 'Bundle')")
    try:
        return Bundle.model_validate(bundle)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidInput(f"invalid FHIR Bundle at {where}: {first.get('msg')}") from e


def _key(resource: Any) -> str:
    return f"{resource.get_resource_type()}/{resource.id}" if resource.id else ""


def _resolve(reference: Any, by_ref: dict[str, Any], what: str, where: str) -> Any:
    ref = reference.reference if reference is not None else None
    if not ref:
        raise InvalidInput(f"{where}: no {what} reference")
    # "Patient/p1", a full URL naming it, or an entry's fullUrl (urn:uuid:...).
    found = by_ref.get(ref) or by_ref.get("/".join(ref.rsplit("/", 2)[-2:]))
    if found is None:
        raise InvalidInput(f"{where}: {what} {ref!r} is not in the bundle")
    return found


def _test(catalog: Catalog, request: Any, where: str) -> Test:
    codings = (request.code.concept.coding if getattr(request.code, "concept", None)
               else getattr(request.code, "coding", None)) if request.code else None
    for coding in codings or []:
        if coding.system == LOINC and coding.code:
            test = catalog.by_loinc(coding.code)
            if test is None:
                raise InvalidInput(f"{where}.code: LOINC {coding.code!r} is not in the test "
                                   f"catalog {catalog.version}")
            return test
        if coding.system == CATALOG_SYSTEM and coding.code:
            return catalog.test(coding.code)
    raise InvalidInput(f"{where}.code: no coding with system {LOINC} or {CATALOG_SYSTEM}")


def _when(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise InvalidInput(f"{where}: a time needs a time zone")
        return value.astimezone(UTC)
    raise InvalidInput(f"{where}: {value!r} is a date, not a date and time")


def parse_service_request_bundle(bundle: dict[str, Any], site_id: str,
                                 catalog: Catalog | None = None) -> OrderRequest:
    """The order in ``bundle`` for ``site_id``; InvalidInput naming the bad element."""
    catalog = catalog or get_catalog()
    parsed = _validated(bundle)
    resources = [e.resource for e in (parsed.entry or []) if e.resource is not None]
    by_ref: dict[str, Any] = {}
    for entry in parsed.entry or []:
        if entry.resource is None:
            continue
        if entry.fullUrl:
            by_ref[str(entry.fullUrl)] = entry.resource
        if _key(entry.resource):
            by_ref[_key(entry.resource)] = entry.resource
    requests = [r for r in resources if r.get_resource_type() == "ServiceRequest"]
    if not requests:
        raise InvalidInput("the Bundle has no ServiceRequest: it orders nothing")
    patient = None
    placer = ""
    provider = visit = ""
    stat = False
    tubes: dict[str, dict[str, Any]] = {}
    for n, request in enumerate(requests):
        where = f"ServiceRequest[{n}]"
        subject = _resolve(request.subject, by_ref, "subject", where)
        if subject.get_resource_type() != "Patient":
            raise InvalidInput(f"{where}.subject: must be a Patient")
        if patient is not None and subject is not patient:
            raise InvalidInput(f"{where}.subject: one patient per bundle")
        patient = subject
        group = request.requisition.value if request.requisition else None
        own = request.identifier[0].value if request.identifier else None
        this = group or own or ""
        if not this:
            raise InvalidInput(f"{where}: no placer order number (requisition or identifier)")
        if placer and this != placer:
            raise InvalidInput(f"{where}: placer order number {this!r} differs from "
                               f"{placer!r}: one order per bundle")
        placer = this
        if request.priority in _STAT:
            stat = True
        if request.requester is not None and request.requester.display:
            provider = provider or request.requester.display
        encounter = request.encounter
        if encounter is not None and encounter.identifier is not None:
            visit = visit or (encounter.identifier.value or "")
        test = _test(catalog, request, where)
        specimens = request.specimen or []
        if len(specimens) > 1:
            raise InvalidInput(f"{where}.specimen: one tube per test")
        if specimens:
            spec = _resolve(specimens[0], by_ref, "specimen", f"{where}.specimen")
            if spec.get_resource_type() != "Specimen":
                raise InvalidInput(f"{where}.specimen: must be a Specimen")
            key = _key(spec) or f"tube-{n}"
            tube_id = spec.identifier[0].value if spec.identifier else ""
            collected = _when(spec.collection.collectedDateTime if spec.collection else None,
                              f"{where}.specimen.collection.collectedDateTime")
            codes = [c.code for cc in (spec.condition or []) for c in (cc.coding or [])
                     if c.system == V2_0493 and c.code]
            unknown = [c for c in codes if c not in _CONDITION and c != "CFU"]
            if unknown:
                raise InvalidInput(f"{where}.specimen.condition: {unknown[0]!r} is not one "
                                   "of ROOM, COOL, FROZ, CFU (HL7 table 0493)")
            condition = next((_CONDITION[c] for c in codes if c in _CONDITION), "room")
            spun = "CFU" in codes
        else:
            key, tube_id, collected, condition, spun = (f"type:{test.specimen_type}", "",
                                                        None, "room", False)
        tube = tubes.setdefault(key, {"id": tube_id or "", "type": test.specimen_type,
                                      "collected": collected, "condition": condition,
                                      "spun": spun, "tests": []})
        tube["tests"].append(test.code)
    assert patient is not None
    patient_id = patient.identifier[0].value if patient.identifier else ""
    if not patient_id:
        raise InvalidInput("Patient.identifier: the patient has no identifier")
    name = ""
    if patient.name:
        first = patient.name[0]
        name = "^".join([first.family or "", " ".join(first.given or [])]).strip("^")
    birth = patient.birthDate.strftime("%Y%m%d") if patient.birthDate else ""
    sex = {"male": "M", "female": "F"}.get(patient.gender or "", "U")
    return OrderRequest(
        site_id=site_id, placer_order_number=placer, patient_id=patient_id,
        patient_name=name, sex=sex, birth_date=birth, visit_number=visit,
        ordering_provider=provider, priority="stat" if stat else "routine",
        specimens=tuple(SpecimenRequest(
            site_specimen_id=t["id"], specimen_type=t["type"], collected_at=t["collected"],
            condition=t["condition"], spun=t["spun"], tests=tuple(t["tests"]))
            for t in tubes.values()))


def accept_bundle(session: Session, bundle: dict[str, Any], *, site_id: str, actor: str,
                  peer: str = "") -> LabOrder:
    """Parse and accept a bundle (all or nothing) and keep it as an inbound message
    (channel ``fhir``, control id = the bundle's identifier or id).  Refusals raise;
    the caller's transaction rolls back."""
    order = accept_order(session, parse_service_request_bundle(bundle, site_id),
                         source="fhir", actor=actor)
    ident = bundle.get("identifier") if isinstance(bundle.get("identifier"), dict) else {}
    control = str((ident or {}).get("value") or bundle.get("id") or f"fhir-order-{order.id}")
    session.add(LabInboundMessage(sender=site_id, peer=peer[:64], channel="fhir",
                                  message_type="ServiceRequest", control_id=control[:64],
                                  outcome="AA", reason=f"order {order.filler_order_number}",
                                  raw=json.dumps(bundle)[:1_000_000], order_id=order.id))
    session.flush()
    return order
