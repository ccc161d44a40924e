"""DICOM TLS (PS3.15, BCP 195) at the gateway's second port, against real DCMTK peers.

The real gateway process listens on its plain port and on a mutual-TLS port; DCMTK's
``echoscu``/``storescu`` with ``+tls`` are the county sites.  Certificates come from the
center's TLS CA through ``rdc sites cert`` (a real CLI process) or, for the ones a CLI
would never make (an expired one), from :mod:`core.site_certs` directly.  Every refusal
must also leave an audit record saying why.  Delivery back to a site goes over TLS to
DCMTK's ``storescp +tls``.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from sqlalchemy import select

from conftest import Center, free_port, wait_port, wait_until
from core import audit, jobs, site_certs, tls_ca
from core.models import AuditRecord, Site, SiteCertificate
from core.sites import SiteSpec, add_site
from test_delivery import (
    MLLPServer,
    job_of,
    make_outputs,
    reload,
    schedule,
    signed_version,
    upload,
)

CT_SMALL = Path(str(get_testdata_file("CT_small.dcm")))


@dataclass(frozen=True)
class Bundle:
    key: Path
    cert: Path
    ca: Path


@dataclass
class TLSWorld:
    center: Center
    tls_port: int
    tmp: Path
    #: county-a's certificate, issued by `rdc sites cert`.
    a: Bundle


def _bundle(directory: Path, site_id: str) -> Bundle:
    return Bundle(directory / f"{site_id}-key.pem", directory / f"{site_id}-cert.pem",
                  directory / "ca-cert.pem")


def _issue_cli(c: Center, site_id: str, out: Path) -> tuple[Bundle, str]:
    """`rdc sites cert SITE --out DIR`; the bundle and the serial it printed."""
    r = c.rdc("sites", "cert", site_id, "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    serial = re.search(r"serial ([0-9a-f]+)", r.stdout)
    assert serial, r.stdout
    return _bundle(out, site_id), serial.group(1)


def _start_world(center: Center, tmp_path: Path, **env: str) -> TLSWorld:
    tls_port = free_port()
    center.extra_env["RDC_GATEWAY_TLS_PORT"] = str(tls_port)
    center.extra_env.update(env)
    center.start_orthanc()
    center.add_site("county-a", "COUNTY_A", allowed=("127.0.0.1/32",))
    center.add_site("county-b", "COUNTY_B", allowed=("127.0.0.1/32",))
    a, _serial = _issue_cli(center, "county-a", tmp_path / "county-a")
    center.start_gateway()
    assert center.gateway_proc is not None
    wait_port(tls_port, 60, center.gateway_proc)
    return TLSWorld(center, tls_port, tmp_path, a)


@pytest.fixture
def world(center: Center, tmp_path: Path) -> TLSWorld:
    """Orthanc and the gateway (plain and TLS port) for county-a (COUNTY_A, holding a
    certificate) and county-b (COUNTY_B), both from loopback.  Refusals are aggregated
    per peer and window; these tests see each one's own record (a high burst)."""
    return _start_world(center, tmp_path, RDC_GATEWAY_REFUSAL_AUDIT_BURST="200")


def _tls_args(bundle: Bundle | None, ca: Path | None) -> list[str]:
    args: list[str] = []
    if bundle is not None:
        args += ["+tls", str(bundle.key), str(bundle.cert)]
    if ca is not None:
        args += ["+cf", str(ca)]
    return args


def echoscu(port: int, calling: str, tls: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["echoscu", "-v", "-to", "15", "-ta", "15", *tls, "-aet", calling,
                           "-aec", "RDC_CENTER", "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=60, check=False)


def storescu(port: int, calling: str, tls: list[str],
             path: Path = CT_SMALL) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["storescu", "-v", "-to", "15", "-ta", "15", "-td", "60", *tls,
                           "-aet", calling, "-aec", "RDC_CENTER", "127.0.0.1", str(port),
                           str(path)], capture_output=True, text=True, timeout=120,
                          check=False)


def _out(r: subprocess.CompletedProcess[str]) -> str:
    return r.stdout + r.stderr


def audit_rows(c: Center, action: str) -> list[AuditRecord]:
    with c.db.session() as s:
        return list(s.scalars(select(AuditRecord).where(AuditRecord.action == action)
                              .order_by(AuditRecord.seq)))


def tls_refusals(c: Center, category: str) -> list[dict[str, Any]]:
    return [dict(r.detail) for r in audit_rows(c, "tls.refuse")
            if r.detail.get("category") == category]


def _key_body(pem: bytes) -> bytes:
    """The base64 body of a PEM key, as it would appear if anything stored it."""
    return b"".join(line for line in pem.splitlines() if not line.startswith(b"-----"))


# Tests --------------------------------------------------------------------------------
def test_site_certificate_echoes_and_stores_over_tls(world: TLSWorld) -> None:
    c, a = world.center, world.a
    # The site's files: owner-only, and the center kept no copy of the key anywhere.
    assert os.stat(a.key.parent).st_mode & 0o777 == 0o700
    for path in (a.key, a.cert, a.ca):
        assert os.stat(path).st_mode & 0o777 == 0o600, path
    key_body = _key_body(a.key.read_bytes())
    assert len(key_body) > 100
    for path in c.home.rglob("*"):
        if path.is_file():
            assert key_body not in path.read_bytes(), f"the site's key is in {path}"

    r = echoscu(world.tls_port, "COUNTY_A", _tls_args(a, a.ca))
    assert r.returncode == 0 and "Received Echo Response (Success)" in _out(r), _out(r)

    r = storescu(world.tls_port, "COUNTY_A", _tls_args(a, a.ca))
    assert r.returncode == 0 and "Received Store Response (Success)" in _out(r), _out(r)
    sop_uid = str(dcmread(CT_SMALL, stop_before_pixels=True).SOPInstanceUID)
    with c.orthanc() as orthanc:
        wait_until(lambda: orthanc.find_instance(sop_uid), 60, "the instance in Orthanc")
    accepted = [r.detail for r in audit_rows(c, "association.accept")]
    assert any(d.get("calling_ae") == "COUNTY_A" for d in accepted), accepted

    # A site that holds a certificate is refused on the plain port: its AE title and
    # address alone no longer identify it.
    r = echoscu(c.gateway_port, "COUNTY_A", [])
    assert "Association Rejected" in _out(r), _out(r)
    # Refusals are written by the gateway's refusal auditor thread, a moment after the
    # A-ASSOCIATE-RJ went out (pacs_gateway.refusal_audit).
    wait_until(lambda: any("must send over DICOM TLS" in row.detail["reason"]
                           for row in audit_rows(c, "association.reject")),
               30, "the audited refusal of the plain port")
    # county-b has no certificate: the plain port still serves it.
    r = echoscu(c.gateway_port, "COUNTY_B", [])
    assert r.returncode == 0 and "Success" in _out(r), _out(r)

    # A removed site that holds certificates is disabled (the certificates keep their
    # history), and its certificate no longer opens the TLS port.
    r = c.rdc("sites", "remove", "county-a")
    assert r.returncode == 0 and "disabled" in r.stdout, r.stdout + r.stderr
    r = echoscu(world.tls_port, "COUNTY_A", _tls_args(a, a.ca))
    assert r.returncode != 0 and "Success" not in _out(r), _out(r)
    wait_until(lambda: tls_refusals(c, "site_disabled"), 30, "the refusal's audit record")
    with c.db.session() as s:
        assert audit.verify(s).ok


def test_wrong_expired_revoked_missing_and_plain_are_refused_and_audited(
        world: TLSWorld) -> None:
    c, a, port = world.center, world.a, world.tls_port
    settings = c.settings

    # A certificate for county-a from another CA (a second center's, say).
    other = tls_ca.create_ca("Another Center")
    forged = tls_ca.issue_site_certificate(other, "county-a", "Another Center", days=30)
    forged_dir = world.tmp / "forged"
    site_certs.write_bundle(forged_dir, "county-a", forged, other.cert_pem)
    # An expired one from the right CA, recorded as issued.
    with c.db.session() as s:
        _row, expired = site_certs.issue(s, settings, "county-a", actor="test",
                                         now=datetime.now(UTC) - timedelta(days=400), days=30)
    expired_dir = world.tmp / "expired"
    site_certs.write_bundle(expired_dir, "county-a", expired, a.ca.read_bytes())
    # A second certificate of county-a, revoked through the CLI while the gateway runs.
    revoked, serial = _issue_cli(c, "county-a", world.tmp / "revoked")
    r = echoscu(port, "COUNTY_A", _tls_args(revoked, a.ca))
    assert r.returncode == 0, _out(r)  # valid before the revocation
    r = c.rdc("sites", "cert", "county-a", serial.upper(), "--revoke", "--reason", "laptop lost")
    assert r.returncode == 0 and f"revoked certificate {serial}" in r.stdout, r.stdout + r.stderr
    assert [d.detail["serial"] for d in audit_rows(c, "site.cert_revoke")] == [serial]
    gateway_pid = c.gateway_proc.pid if c.gateway_proc else None

    cases: list[tuple[str, list[str]]] = [
        ("wrong_ca", _tls_args(_bundle(forged_dir, "county-a"), a.ca)),
        ("expired", _tls_args(_bundle(expired_dir, "county-a"), a.ca)),
        ("revoked", _tls_args(revoked, a.ca)),
        # +tla: TLS without a client certificate (-ic: the client checks nothing either).
        ("no_certificate", ["+tla", "-ic"]),
        ("not_tls", []),
    ]
    for category, tls in cases:
        before = len(tls_refusals(c, category))
        for run in (echoscu(port, "COUNTY_A", tls), storescu(port, "COUNTY_A", tls)):
            assert run.returncode != 0, f"{category}: {_out(run)}"
            assert "Success" not in _out(run), f"{category}: {_out(run)}"
        found = wait_until(lambda cat=category, n=before: (
            rows if len(rows := tls_refusals(c, cat)) >= n + 2 else None),
            30, f"two audit records of {category} refusals")
        assert all(d["peer"] == "127.0.0.1" and d["port"] == port and d["reason"]
                   for d in found), found
    revoked_rows = tls_refusals(c, "revoked")
    assert revoked_rows[-1]["serial"] == serial and revoked_rows[-1]["site"] == "county-a"
    assert "expired" in tls_refusals(c, "expired")[-1]["reason"]
    assert "first byte 0x01" in tls_refusals(c, "not_tls")[-1]["reason"]

    # Revocation took effect without a restart, and only for that serial.
    assert c.gateway_proc is not None and c.gateway_proc.pid == gateway_pid
    assert c.gateway_proc.poll() is None
    r = storescu(port, "COUNTY_A", _tls_args(a, a.ca))
    assert r.returncode == 0 and "Received Store Response (Success)" in _out(r), _out(r)
    listed = c.rdc("sites", "cert", "county-a", "--list")
    assert listed.returncode == 0, listed.stderr
    assert re.search(rf"{serial}.*revoked.*laptop lost", listed.stdout), listed.stdout
    with c.db.session() as s:
        states = {row.serial: site_certs.state(row) for row in
                  s.scalars(select(SiteCertificate).where(SiteCertificate.site_id == "county-a"))}
        assert sorted(states.values()) == ["active", "expired", "revoked"], states
        assert audit.verify(s).ok


def test_certificate_of_one_site_with_another_sites_ae_title_is_refused(
        world: TLSWorld) -> None:
    c, a = world.center, world.a
    r = storescu(world.tls_port, "COUNTY_B", _tls_args(a, a.ca))
    assert "Association Rejected" in _out(r), _out(r)
    assert "Success" not in _out(r)
    # Written by the gateway's refusal auditor thread, a moment after the refusal.
    wait_until(lambda: any("belongs to site 'county-a'" in r.detail["reason"]
                           and "county-b" in r.detail["reason"]
                           for r in audit_rows(c, "association.reject")
                           if r.detail.get("calling_ae") == "COUNTY_B"),
               30, "the audited refusal of another site's certificate")
    with c.db.session() as s:
        assert s.scalar(select(AuditRecord.seq).where(
            AuditRecord.action == "association.accept",
            AuditRecord.actor == "site:county-b")) is None


def test_profile_refuses_old_protocols_and_non_aead_ciphers(world: TLSWorld) -> None:
    """BCP 195: TLS 1.2+ with ECDHE + AEAD suites, no compression."""
    a, port = world.a, world.tls_port

    def handshake(configure: Any) -> str:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(a.ca))
        ctx.load_cert_chain(str(a.cert), str(a.key))
        configure(ctx)
        with socket.create_connection(("127.0.0.1", port), timeout=15) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.compression() is None
            return f"{tls.version()} {tls.cipher()[0]}"  # type: ignore[index]

    def tls11(ctx: ssl.SSLContext) -> None:
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():  # deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_1

    def cbc(ctx: ssl.SSLContext) -> None:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers("ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA")

    def tls12(ctx: ssl.SSLContext) -> None:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2

    for weak in (tls11, cbc):
        with pytest.raises(ssl.SSLError):
            handshake(weak)
    assert handshake(tls12) == "TLSv1.2 ECDHE-ECDSA-AES128-GCM-SHA256"
    assert handshake(lambda ctx: None).startswith("TLSv1.3 ")
    wait_until(lambda: len(tls_refusals(world.center, "weak_tls")) >= 2, 30,
               "audit records of the refused weak handshakes")


def test_a_flood_of_failed_handshakes_costs_a_bounded_number_of_audit_rows(
        center: Center, tmp_path: Path) -> None:
    """Failed handshakes go through the gateway's refusal audit: the first few of a
    window get their own record, the rest one summary per peer and window."""
    w = _start_world(center, tmp_path, RDC_GATEWAY_REFUSAL_AUDIT_BURST="3",
                     RDC_GATEWAY_REFUSAL_AUDIT_WINDOW_S="3")
    c = w.center
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", w.tls_port), timeout=10) as sock:
            sock.sendall(b"\x01\x00" + b"\x00" * 8)  # the start of a plain A-ASSOCIATE-RQ
            sock.settimeout(10)
            try:  # closed by the gateway (a reset: it left our bytes unread), no answer
                answer = sock.recv(1)
            except ConnectionResetError:
                answer = b""
            assert answer == b""
    summaries = wait_until(lambda: [r.detail for r in audit_rows(c, "refusal.summary")
                                    if r.detail.get("kinds", {}).get("tls_not_tls")],
                           60, "the window's refusal summary")
    assert sum(d["kinds"]["tls_not_tls"] for d in summaries) >= 20 - 3, summaries
    assert len(audit_rows(c, "tls.refuse")) <= 3 * 2  # at most the burst per window


# Delivery over TLS ------------------------------------------------------------------
@pytest.fixture
def env_center(env_center: Center) -> Center:
    """The center's settings as this process's (the delivery job reads them), Orthanc up."""
    env_center.start_orthanc()
    return env_center


def _hospital_scp_identity(tmp: Path, name: str) -> tuple[Path, Path, Path]:
    """A county hospital's own CA and its SCP's server certificate for 127.0.0.1:
    (CA file, key file, certificate file)."""
    ca = tls_ca.create_ca(name)
    server = tls_ca.issue_server_certificate(ca, "PACS", name, ["127.0.0.1", "localhost"],
                                             days=30)
    tmp.mkdir(parents=True, exist_ok=True)
    files = (tmp / "hospital-ca.pem", tmp / "scp-key.pem", tmp / "scp-cert.pem")
    files[0].write_bytes(ca.cert_pem)
    tls_ca.write_private(files[1], server.key_pem)
    files[2].write_bytes(server.cert_pem)
    return files


def test_delivery_over_tls_to_dcmtk_storescp(env_center: Center, tmp_path: Path) -> None:
    c = env_center
    hospital_ca, scp_key, scp_cert = _hospital_scp_identity(tmp_path / "hospital", "County D")
    other_ca, _k, _c = _hospital_scp_identity(tmp_path / "elsewhere", "Somewhere Else")
    center_ca = tls_ca.ca_file(c.settings)  # what the site trusts for the center's client
    text = "Delivered over TLS."
    outputs = make_outputs(text)
    upload(c, outputs)
    port = free_port()
    out = tmp_path / "received"
    out.mkdir()
    with c.db.session() as s:
        for site_id, ae in (("county-d", "COUNTY_D"), ("county-e", "COUNTY_E")):
            add_site(s, SiteSpec(id=site_id, name=site_id, ae_title=ae, host="127.0.0.1",
                                 port=port, allowed_addresses=("127.0.0.1/32",),
                                 accepts_results=True), actor="test")
    for site_id, ca in (("county-d", hospital_ca), ("county-e", other_ca)):
        r = c.rdc("sites", "cert", site_id, "--delivery-ca", str(ca))
        assert r.returncode == 0 and "DICOM TLS" in r.stdout, r.stdout + r.stderr
    # -rc: the site requires the center's client certificate, from the center's TLS CA.
    with open(tmp_path / "storescp.log", "wb") as log:
        proc = subprocess.Popen(
            ["storescp", "-v", "+tls", str(scp_key), str(scp_cert), "+cf", str(center_ca),
             "-rc", "-aet", "COUNTY_D", "-od", str(out), str(port)],
            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_port(port, 30, proc)
        delivery = schedule(c, signed_version(c, "county-d", outputs), "county-d")
        assert jobs.execute(c.db, job_of(c, delivery.id)) == "succeeded"
        done = reload(c, delivery.id)
        assert done.state == "sent", done.last_error
        # The same SCP for a site whose configured CA did not issue it: refused, with why.
        wrong = schedule(c, signed_version(c, "county-e", outputs), "county-e")
        jobs.execute(c.db, job_of(c, wrong.id))
        failed = reload(c, wrong.id)
        assert failed.state == "failed"
        assert "over TLS" in (failed.last_error or "") and \
            "unable to get local issuer certificate" in (failed.last_error or ""), \
            failed.last_error
    finally:
        proc.terminate()
        proc.wait(30)
    log_text = (tmp_path / "storescp.log").read_text(errors="replace")
    received = {str(dcmread(p).SOPInstanceUID): p for p in out.iterdir()}
    assert set(received) == {outputs["SR"][0], outputs["PDF"][0]}, log_text
    assert dcmread(received[outputs["SR"][0]]).ContentSequence[0].TextValue == text
    with c.db.session() as s:
        starts = [r.detail for r in s.scalars(select(AuditRecord).where(
            AuditRecord.action == "delivery.attempt_start"))]
        assert starts and all(d["tls"] is True for d in starts), starts
        site = s.get(Site, "county-d")
        assert site is not None and site.delivery_tls_ca == hospital_ca.read_text()


def _his_context(key: Path, cert: Path, client_ca: Path) -> ssl.SSLContext:
    """A county HIS's TLS server context: its own certificate, and (like the DICOM
    receiver above) it requires the center's client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(cert), str(key))
    context.load_verify_locations(str(client_ca))
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def test_hl7_results_over_mllp_inside_tls(env_center: Center, tmp_path: Path) -> None:
    """ORU^R01 to a site with a delivery CA goes inside TLS: the HIS sees the center's
    client certificate, the report arrives intact; a site whose CA did not issue the
    HIS's certificate fails with the TLS reason and nothing is sent."""
    c = env_center
    hospital_ca, his_key, his_cert = _hospital_scp_identity(tmp_path / "hospital", "County D")
    other_ca, _k, _c = _hospital_scp_identity(tmp_path / "elsewhere", "Somewhere Else")
    server = MLLPServer([], tls=_his_context(his_key, his_cert, tls_ca.ca_file(c.settings)))
    message = ("MSH|^~\\&|RDC|CENTER|HIS|COUNTY_D|20261201000000||ORU^R01|MSGTLS1|P|2.5.1\r"
               "PID|1||PAT-TLS||Doe^Jane\r"
               "OBX|1|TX|18748-4^Diagnostic imaging report^LN||Kein Befund.||||||F\r")
    try:
        with c.db.session() as s:
            for site_id, ae in (("county-d", "COUNTY_D"), ("county-e", "COUNTY_E")):
                site = add_site(s, SiteSpec(id=site_id, name=site_id, ae_title=ae,
                                            host="127.0.0.1", port=104,
                                            allowed_addresses=("127.0.0.1/32",),
                                            accepts_results=True), actor="test")
                site.hl7_host, site.hl7_port = "127.0.0.1", server.port
        for site_id, ca in (("county-d", hospital_ca), ("county-e", other_ca)):
            r = c.rdc("sites", "cert", site_id, "--delivery-ca", str(ca))
            assert r.returncode == 0 and "HL7 MLLP over TLS" in r.stdout, r.stdout + r.stderr
        good = schedule(c, signed_version(c, "county-d", None, hl7=message), "county-d",
                        channel="hl7")
        assert jobs.execute(c.db, job_of(c, good.id)) == "succeeded"
        assert reload(c, good.id).state == "sent"
        assert server.messages == [message], "the report did not arrive intact"
        assert server.peers and server.peers[0], "the HIS saw no client certificate"
        wrong = schedule(c, signed_version(c, "county-e", None, hl7=message), "county-e",
                         channel="hl7")
        jobs.execute(c.db, job_of(c, wrong.id))
        failed = reload(c, wrong.id)
        assert failed.state == "failed"
        assert "TLS handshake with HL7 endpoint" in (failed.last_error or "") and \
            "unable to get local issuer certificate" in (failed.last_error or ""), \
            failed.last_error
        assert server.messages == [message], "a report went to an unverified HIS"
    finally:
        server.close()
    with c.db.session() as s:
        starts = [r.detail for r in s.scalars(select(AuditRecord).where(
            AuditRecord.action == "delivery.attempt_start"))]
    assert len(starts) == 2 and all(d["tls"] is True for d in starts), starts
