"""A full round: a study arrives through the gateway, a report is drafted and signed
through the HTTP API, the signed SR and PDF reach the county site (DCMTK storescp
standing in for it) through the worker, and ``rdc reports verify`` accepts the
received files and refuses tampered copies."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pyotp
import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from sqlalchemy import func, select

from conftest import REPO, SENDER_AE, Center, free_port, wait_until
from core.models import AuditRecord, Delivery, ReportVersion, Study
from core.settings import get_settings
from devkit.dcmtk import start_storescp, storescu
from viewer.accounts import add_user
from viewer.app import create_app
from viewer.auth import api_token

PASSPHRASE = "correct horse battery"
PASSWORD = "a long enough password 1"


@pytest.fixture
def site_scp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    port, out = free_port(), tmp_path / "county-inbox"
    proc = start_storescp(out, port, ae_title=SENDER_AE)
    yield port, out
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def api(center: Center, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    for k, v in center.env.items():
        if k.startswith("RDC_"):
            monkeypatch.setenv(k, v)
    get_settings.cache_clear()
    with TestClient(create_app()) as c:
        yield c
    get_settings.cache_clear()


def sign_in(c: Center, api: TestClient, username: str, roles: list[str] | None = None) -> None:
    """Create the reader's account and sign in with password + TOTP, as a person would."""
    with c.db.session() as s:
        _, uri = add_user(s, get_settings(), username=username, display_name=username,
                          password=PASSWORD, roles=roles or ["radiologist"], all_sites=True,
                          actor="test")
    r = api.post("/api/auth/login", json={"username": username, "password": PASSWORD,
                                          "totp": pyotp.parse_uri(uri).now()})
    assert r.status_code == 200, r.text
    api.headers["X-CSRF-Token"] = r.json()["csrf_token"]


def _receive_study(c: Center) -> int:
    ct = Path(get_testdata_file("CT_small.dcm"))
    result = storescu([ct], host="127.0.0.1", port=c.gateway_port, calling_ae=SENDER_AE,
                      called_ae=c.gateway_ae)
    assert result.succeeded, result.output

    def stored() -> int | None:
        with c.db.session() as s:
            st = s.scalar(select(Study))
            return st.id if st is not None and st.stored_instances >= 1 else None
    return int(wait_until(stored, 60, "the study to reach Orthanc"))


def _issue(c: Center, reader: str, name: str, alg: str) -> int:
    env = {**c.env, "RDC_KEY_PASSPHRASE": PASSPHRASE}
    out = subprocess.run([sys.executable, "-m", "rdc", "keys", "issue", reader, "--name", name,
                          "--algorithm", alg], env=env, capture_output=True, text=True,
                         timeout=120, check=False, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    assert alg in out.stdout and "fingerprint" in out.stdout
    return int(out.stdout.split()[1])


def _verify(c: Center, *files: Path) -> subprocess.CompletedProcess[str]:
    return c.rdc("reports", "verify", *map(str, files))


def _flip(src: Path, dst: Path, offset: int) -> Path:
    data = bytearray(src.read_bytes())
    data[offset] ^= 0x01
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("alg", ["sm2", "ed25519"])
def test_sign_deliver_verify_round_trip(alg: str, center: Center, api: TestClient,
                                        site_scp: tuple[int, Path], tmp_path: Path) -> None:
    c = center
    scp_port, inbox = site_scp
    c.start_orthanc()
    c.add_site(port=scp_port, accepts_results=True)
    c.start_gateway()
    c.start_worker()
    study_id = _receive_study(c)
    _issue(c, "dr.li", "李医生", alg)
    sign_in(c, api, "dr.li")

    r = api.post(f"/api/studies/{study_id}/report")
    assert r.status_code == 201, r.text
    report = r.json()
    # CT_small.dcm names no body part and no chest in its description: the CT fallback.
    assert report["template"] == "ct-generic@1.0.0" and report["state"] == "draft"
    rid = report["id"]
    # The template's placeholder is unresolved: signing is refused, nothing changes.
    r = api.post(f"/api/reports/{rid}/sign", json={"passphrase": PASSPHRASE})
    assert r.status_code == 422 and "technique" in r.json()["detail"], r.text
    fields = {"technique": "Axial CT of the chest without intravenous contrast.",
              "findings": "右肺上叶见一结节，直径约8毫米。No pleural effusion.",
              "impression": "右肺上叶结节，建议3个月后复查。"}
    r = api.put(f"/api/reports/{rid}/draft", json={"fields": fields, "state": "preliminary"})
    assert r.status_code == 200 and r.json()["state"] == "preliminary", r.text
    r = api.post(f"/api/reports/{rid}/sign", json={"passphrase": "wrong passphrase"})
    assert r.status_code == 422 and "passphrase" in r.json()["detail"], r.text
    r = api.post(f"/api/reports/{rid}/sign", json={"passphrase": PASSPHRASE})
    assert r.status_code == 200, r.text
    signed = r.json()
    assert signed["state"] == "final"
    v1 = signed["versions"][0]
    assert v1["state"] == "final" and v1["signed_by"] == "dr.li"
    assert v1["hash_algorithm"] == ("sm3" if alg == "sm2" else "sha256")
    assert "ORU^R01" in v1["hl7_message"] and v1["fhir_report"]["status"] == "final"

    # Signing the same version again is refused.
    r = api.post(f"/api/reports/{rid}/sign", json={"passphrase": PASSPHRASE})
    assert r.status_code == 409 and "already signed" in r.json()["detail"]

    # The worker delivers SR + PDF to the county site.
    received = wait_until(lambda: sorted(p for p in inbox.rglob("*") if p.is_file())
                          if len([p for p in inbox.rglob("*") if p.is_file()]) >= 2 else None,
                          90, "the SR and PDF at the county site")
    sops = {str(pydicom.dcmread(p).SOPInstanceUID): p for p in received}
    assert set(sops) == {v1["sr_sop_uid"], v1["pdf_sop_uid"]}
    # The site has the files a moment before the worker records the outcome.
    def delivered() -> bool:
        with c.db.session() as s:
            d = s.scalar(select(Delivery))
            return d is not None and d.state in ("sent", "committed")
    wait_until(delivered, 30, "the delivery to be recorded as sent")
    with c.db.session() as s:
        attempts = s.scalar(select(func.count()).select_from(AuditRecord).where(
            AuditRecord.object_type == "delivery"))
        assert attempts and attempts >= 1

    listed = c.rdc("deliveries", "list")
    assert listed.returncode == 0 and "dicom" in listed.stdout, listed.stdout + listed.stderr
    assert ("sent" in listed.stdout or "committed" in listed.stdout), listed.stdout
    reports = c.rdc("reports", "list")
    assert reports.returncode == 0 and "final" in reports.stdout and "dr.li" in reports.stdout

    ok = _verify(c, *received)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("OK ") == 2 and "李医生" in ok.stdout and alg in ok.stdout

    # The same sealed PDF through the app (what the site's clerk opens), dated, the
    # patient named as on paper, with a key image of the study; it verifies as it is.
    from reports.pdf import pdf_from_dataset

    r = api.get(f"/api/reports/{rid}/pdf")
    assert r.status_code == 200 and r.headers["content-type"] == "application/pdf", r.text
    assert r.content == pdf_from_dataset(pydicom.dcmread(sops[v1["pdf_sop_uid"]]))
    (tmp_path / "from-app.pdf").write_bytes(r.content)
    ok = _verify(c, tmp_path / "from-app.pdf")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    text = subprocess.run(["pdftotext", "-enc", "UTF-8", str(tmp_path / "from-app.pdf"), "-"],
                          capture_output=True, check=True, timeout=60).stdout.decode()
    assert "2004-01-19" in text and "COMPRESSEDSAMPLES, CT1" in text, text
    assert "Key image: CT" in text, text
    images = subprocess.run(["pdfimages", "-list", str(tmp_path / "from-app.pdf")],
                            capture_output=True, check=True, timeout=60, text=True).stdout
    assert len(images.splitlines()) > 2, images

    sr_file, pdf_file = sops[v1["sr_sop_uid"]], sops[v1["pdf_sop_uid"]]
    sr_text = sr_file.read_bytes()
    offset = sr_text.index("右肺上叶".encode())
    bad_sr = _flip(sr_file, tmp_path / "tampered-sr.dcm", offset + 1)
    out = _verify(c, bad_sr)
    assert out.returncode == 5 and "content hash does not match" in out.stderr, out.stderr
    pdf_bytes = pdf_file.read_bytes()
    bad_pdf = _flip(pdf_file, tmp_path / "tampered-pdf.dcm", len(pdf_bytes) // 2)
    out = _verify(c, bad_pdf)
    assert out.returncode == 5 and "FAILED" in out.stderr, out.stderr
    # The delivered wrapper's identifying attributes are sealed, the patient's sex
    # and birth date included: relabelled, it no longer verifies.
    for keyword, value in (("PatientID", "OTHER-1"), ("PatientSex", "F"),
                           ("PatientBirthDate", "19991231")):
        relabelled = pydicom.dcmread(pdf_file)
        setattr(relabelled, keyword, value)
        relabelled.save_as(tmp_path / f"relabelled-{keyword}.dcm")
        out = _verify(c, tmp_path / f"relabelled-{keyword}.dcm")
        assert out.returncode == 5 and f"{keyword} differs" in out.stdout + out.stderr, (
            out.stdout + out.stderr)

    # An addendum is a new version, signed again, pointing at the first.
    r = api.post(f"/api/reports/{rid}/addenda",
                 json={"fields": {"impression": "右肺上叶结节；补充：无淋巴结肿大。"}})
    assert r.status_code == 201, r.text
    r = api.post(f"/api/reports/{rid}/sign", json={"passphrase": PASSPHRASE})
    assert r.status_code == 200 and r.json()["state"] == "amended", r.text
    with c.db.session() as s:
        v2 = s.scalar(select(ReportVersion).where(ReportVersion.number == 2))
        assert v2 is not None and v2.predecessor_id is not None and v2.state == "final"
        first = s.get(ReportVersion, v2.predecessor_id)
        assert first is not None and first.canonical and first.envelope  # frozen, kept


def test_signing_refusals_change_nothing(center: Center, api: TestClient) -> None:
    c = center
    c.start_orthanc()
    c.add_site(accepts_results=False)
    c.start_gateway()
    study_id = _receive_study(c)
    li = _issue(c, "dr.li", "Dr Li", "ed25519")
    wang = _issue(c, "dr.wang", "Dr Wang", "ecdsa-p256")
    # The operator token manages the center but never signs.
    token = {"Authorization": f"Bearer {api_token(get_settings())}"}
    rid = api.post(f"/api/studies/{study_id}/report", headers=token).json()["id"]
    r = api.post(f"/api/reports/{rid}/sign", json={"passphrase": PASSPHRASE}, headers=token)
    assert r.status_code == 403 and "operator token" in r.json()["detail"], r.text
    sign_in(c, api, "dr.li")
    api.put(f"/api/reports/{rid}/draft", json={"fields": {
        "technique": "Axial CT.", "findings": "Normal.", "impression": "Normal study."}})

    def sign(**kw: object) -> tuple[int, str]:
        r = api.post(f"/api/reports/{rid}/sign", json={"passphrase": PASSPHRASE, **kw})
        return r.status_code, r.json().get("detail", "")

    code, detail = sign(key_id=wang)
    assert code == 403 and "belongs to 'dr.wang'" in detail
    revoked = c.rdc("keys", "revoke", str(li), "--reason", "left the hospital")
    assert revoked.returncode == 0, revoked.stderr
    listed = c.rdc("keys", "list", "--reader", "dr.li")
    assert listed.returncode == 0 and "revoked" in listed.stdout, listed.stdout
    again = c.rdc("keys", "revoke", str(li))
    assert again.returncode == 4 and "already revoked" in again.stderr, again.stderr
    cert = c.rdc("keys", "export", str(li))
    assert cert.returncode == 0 and cert.stdout.startswith("-----BEGIN CERTIFICATE-----")
    assert "PRIVATE" not in cert.stdout
    code, detail = sign()
    assert code == 409 and "no active signing key" in detail
    code, detail = sign(key_id=li)
    assert code == 409 and "revoked" in detail
    with c.db.session() as s:
        v = s.scalar(select(ReportVersion))
        assert v is not None and v.state == "draft" and v.signed_at is None
        assert not s.scalar(select(func.count()).select_from(AuditRecord).where(
            AuditRecord.action == "report.sign"))
    # A new key for the same reader signs; the report verifies against the center's CA.
    _issue(c, "dr.li", "Dr Li", "sm2")
    code, _ = sign()
    assert code == 200
