"""``rdc``: run and manage the regional diagnostic center."""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from core.db import get_database
from core.errors import RDCError
from core.heartbeat import Heartbeat
from core.settings import Settings, get_settings
from rdc.audit_cli import audit_app
from rdc.backup_cli import backup as backup_command
from rdc.backup_cli import restore as restore_command
from rdc.console import console, err, fail
from rdc.console import load_settings as _settings
from rdc.deploy_cli import deploy_app
from rdc.lab_cli import lab_app
from rdc.models_cli import models_app
from rdc.pathology_cli import pathology_app
from rdc.reports_cli import deliveries_app, keys_app, reports_app
from rdc.sites_tls_cli import sites_cert
from rdc.users_cli import users_app

app = typer.Typer(help=__doc__, no_args_is_help=True, add_completion=False,
                  context_settings={"help_option_names": ["-h", "--help"]})
sites_app = typer.Typer(help="Manage county sites that send studies and receive results.",
                        no_args_is_help=True)
app.add_typer(sites_app, name="sites")
app.add_typer(audit_app, name="audit")
app.add_typer(models_app, name="models")
app.add_typer(keys_app, name="keys")
app.add_typer(reports_app, name="reports")
app.add_typer(deliveries_app, name="deliveries")
app.add_typer(users_app, name="users")
app.add_typer(pathology_app, name="pathology")
app.add_typer(lab_app, name="lab")
app.add_typer(deploy_app, name="deploy")
app.command("backup")(backup_command)
app.command("restore")(restore_command)



def setup_logging(settings: Settings, name: str, level: str = "INFO") -> None:
    """Log to stderr and ``$RDC_HOME/logs/NAME.log``: JSON lines in the file, and on
    stderr unless it is a terminal (core/log_format.py)."""
    from core.log_format import log_handlers

    settings.ensure_dirs()
    handlers = log_handlers(name, settings.log_dir / f"{name}.log", sys.stderr)
    logging.basicConfig(level=level, handlers=handlers, force=True)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)




def _on_term(*_: Any) -> None:
    raise KeyboardInterrupt


def _heartbeat(settings: Settings, role: str, **detail: Any) -> Heartbeat:
    """This role's row in ``node_heartbeats`` (core/heartbeat.py), for ``rdc status`` on
    every node; ``stop()`` it on the way out."""
    return Heartbeat(settings.database_url, settings.node, role,
                     {k: v for k, v in detail.items() if v is not None}).start()


def _stop_within(stop: Callable[[], None], log_file: Path, deadline_s: float = 20.0) -> None:
    """Run a service's ``stop`` and exit the process, even if something hangs.

    Everything the gateway acknowledged is durable before the acknowledgement, so a
    forced exit loses nothing; a gateway that never exits, though, keeps its port
    and blocks a restart.  If ``stop`` overruns, the stacks of all threads go to the
    service's log (to find the cause) and the process exits with status 1.
    """
    with open(log_file, "a") as f:
        faulthandler.dump_traceback_later(deadline_s, exit=True, file=f)
        try:
            stop()
        finally:
            faulthandler.cancel_dump_traceback_later()
    stuck = [t.name for t in threading.enumerate()
             if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if stuck:
        logging.getLogger("rdc").warning("shutdown.threads_left names=%s", stuck)
        logging.shutdown()
        os._exit(0)


# Services -------------------------------------------------------------------
@app.command()
def orthanc() -> None:
    """Run the center's Orthanc (generated config, loopback only) in the foreground."""
    from core.orthanc_process import start_orthanc, stop_process

    s = _settings()
    setup_logging(s, "orthanc")
    signal.signal(signal.SIGTERM, _on_term)
    try:
        proc = start_orthanc(s)
    except RDCError as e:
        raise fail(e) from e
    console.print(f"orthanc: HTTP http://127.0.0.1:{s.orthanc_http_port} (loopback, "
                  f"authenticated), DICOM AE {s.orthanc_aet} port {s.orthanc_dicom_port}")
    beat = _heartbeat(s, "orthanc", http_port=s.orthanc_http_port,
                      dicom_port=s.orthanc_dicom_port)
    try:
        code = proc.wait()
        err.print(f"[red]Orthanc exited with code {code}[/red]; see {s.log_dir / 'orthanc.log'}")
        raise typer.Exit(1)
    except KeyboardInterrupt:
        stop_process(proc)
    finally:
        beat.stop()


@app.command()
def gateway(
    listener: Annotated[bool, typer.Option(
        "--listener", hidden=True, help="Internal: an extra process on the shared port.")] = False,
) -> None:
    """Run the DICOM gateway (C-ECHO/C-STORE SCP, spool, uploader) in the foreground."""
    from pacs_gateway.service import Gateway

    s = _settings()
    setup_logging(s, "gateway-listener" if listener else "gateway")
    signal.signal(signal.SIGTERM, _on_term)
    gw = Gateway(s, primary=not listener)
    try:
        gw.start()
    except RDCError as e:
        gw.stop()
        raise fail(e) from e
    except OSError as e:
        gw.stop()
        err.print(f"[red]error:[/red] cannot listen on port {s.gateway_port}: {e.strerror}")
        raise typer.Exit(1) from e
    beat = None
    if not listener:
        tls_port = s.gateway_tls_listen_port
        console.print(f"gateway: DICOM AE {s.gateway_ae} on {s.gateway_host}:{s.gateway_port} "
                      f"({s.gateway_process_count} processes)"
                      + (f", mutual TLS on port {tls_port}" if tls_port else ""))
        beat = _heartbeat(s, "gateway", port=s.gateway_port, tls_port=tls_port,
                          processes=s.gateway_process_count)
    try:
        gw.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if beat is not None:
            beat.stop()
        _stop_within(gw.stop, s.log_dir / ("gateway-listener.log" if listener
                                           else "gateway.log"))


@app.command()
def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues to consume.")] =
        "routing,inference,delivery",
    concurrency: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 2,
) -> None:
    """Run a Celery worker for the center's queues in the foreground."""
    s = _settings()
    setup_logging(s, "worker")
    from ai_models.runtime import cpu_threads
    from core.tasks import app as celery_app
    from rdc.domains import load_domains

    load_domains()  # every listed domain declares its job kinds (rdc/domains.py)
    from core.errors import ConfigurationError
    from rdc.domains import undeclared_routing_targets

    problems = undeclared_routing_targets(s.routing_rules_path())
    if problems:
        raise fail(ConfigurationError("the routing rules name job kinds that nothing runs:\n  "
                                      + "\n  ".join(problems)))

    if "inference" in queues.split(",") and s.ai_threads == 0 and concurrency > 1:
        # One ONNX Runtime session per worker process: share the cores between them.
        os.environ["RDC_AI_THREADS"] = str(max(1, cpu_threads() // concurrency))
        get_settings.cache_clear()

    from core.metrics import serve_role, worker_collectors

    # Before the pool forks: its processes write to the role's metrics directory.
    serve_role("worker", s, collectors=worker_collectors(s))
    console.print(f"worker: queues {queues} on {s.public_summary()['broker_url']}")
    beat = _heartbeat(s, "worker", queues=queues, concurrency=concurrency)
    try:
        celery_app.worker_main(["worker", "-Q", queues, "-c", str(concurrency),
                                "--loglevel=INFO", "-n", f"rdc-{s.gateway_port}@%h",
                                "--without-gossip", "--without-mingle"])
    finally:
        beat.stop()


@app.command()
def scheduler() -> None:
    """Run the center's periodic tasks (stale-job recovery, due delivery retries) in the
    foreground.  One runs per center: a second one waits in standby (core/scheduler.py)."""
    from core.metrics import serve_role
    from core.scheduler import periodic_tasks, run_scheduler
    from rdc.domains import load_domains

    s = _settings()
    setup_logging(s, "scheduler")
    serve_role("scheduler", s)
    load_domains()  # every listed domain declares its periodic tasks (rdc/domains.py)
    stop = threading.Event()

    def on_term(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    names = ", ".join(t.name for t in periodic_tasks())
    console.print(f"scheduler: {names}")
    beat = _heartbeat(s, "scheduler")
    try:
        run_scheduler(s, stop)
    finally:
        beat.stop()


@app.command()
def commitment() -> None:
    """Run the storage commitment SCP in the foreground: applies the N-EVENT-REPORTs that
    sites send on an association of their own after a delivery (delivery/commitment_scp.py)."""
    from delivery.commitment_scp import serve

    s = _settings()
    setup_logging(s, "commitment")
    port = s.commitment_listen_port
    if port is None:
        err.print("[red]error:[/red] the storage commitment SCP is off (RDC_COMMITMENT_PORT=0)")
        raise typer.Exit(1)
    stop = threading.Event()

    def on_term(*_: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    try:
        console.print(f"commitment: storage commitment SCP, AE {s.gateway_ae} on "
                      f"{s.gateway_host}:{port}")
        serve(s, get_database(s.database_url), stop)
    except OSError as e:
        err.print(f"[red]error:[/red] cannot listen on port {port}: {e.strerror}")
        raise typer.Exit(1) from e


@app.command()
def web() -> None:
    """Run the web app (FastAPI) in the foreground (RDC_WEB_WORKERS processes)."""
    from rdc.web_server import serve, web_workers

    s = _settings()
    _check_web_deployment(s)
    setup_logging(s, "web")
    token = _ensure_api_token(s)  # before the workers start: they all read this one
    console.print(f"web: http://{s.web_host}:{s.web_port}, {web_workers(s)} worker(s) "
                  f"(API docs at /docs for admins; operator token in {token})")
    beat = _heartbeat(s, "web", port=s.web_port, workers=web_workers(s))
    # Uvicorn stops on SIGTERM and then raises the signal again for the handler that was
    # there before it: this one, so that the heartbeat still says "stopped".
    signal.signal(signal.SIGTERM, _on_term)
    try:
        serve(s)  # rdc/web_server.py: each worker loads the domains and logs on its own
    except KeyboardInterrupt:
        pass
    finally:
        beat.stop()


@app.command()
def up() -> None:
    """Start Orthanc, the gateway, a worker and the web app; Ctrl-C stops them all."""
    from rdc.supervisor import run_all

    s = _settings()
    _check_web_deployment(s)
    setup_logging(s, "up")
    _ensure_api_token(s)
    try:
        code = run_all(s, console)
    except RDCError as e:
        raise fail(e) from e
    raise typer.Exit(code)


def _check_web_deployment(settings: Settings) -> None:
    """Refuse, before anything starts, a production web app without secure cookies."""
    from viewer.deployment import check_production

    try:
        check_production(settings)
    except RDCError as e:
        raise fail(e) from e


def _ensure_api_token(settings: Settings) -> Path:
    """The operator token's file, generated now if missing, so scripts can read it at once."""
    from viewer.auth import api_token_path

    return api_token_path(settings)


@app.command()
def token() -> None:
    """Print the path of the operator API token (generated if missing, mode 0600).

    Scripts send it as ``Authorization: Bearer $(cat "$(rdc token)")``.
    """
    s = _settings()
    typer.echo(str(_ensure_api_token(s)))


# Sites ------------------------------------------------------------------------
@sites_app.command("add")
def sites_add(
    site_id: Annotated[str, typer.Argument(help="Short id, e.g. 'county-a'.")],
    name: Annotated[str, typer.Option(help="Display name.")],
    ae_title: Annotated[str, typer.Option("--ae-title", help="The site's calling AE title.")],
    host: Annotated[str, typer.Option(help="Where results go back (host of the site's SCP).")],
    port: Annotated[int, typer.Option(help="Port of the site's SCP for results.")] = 104,
    allow: Annotated[list[str] | None, typer.Option(
        help="Peer address or CIDR allowed to send (repeatable); defaults to --host.")] = None,
    accepts_results: Annotated[bool, typer.Option(
        "--accepts-results/--no-results", help="Whether signed results are sent back.")] = False,
    inactivity: Annotated[float | None, typer.Option(
        help="Seconds of silence after which a study counts as complete.")] = None,
    storage_commitment: Annotated[bool, typer.Option(
        help="The site's SCP answers storage commitment for delivered results.")] = False,
    hl7: Annotated[str | None, typer.Option(
        help="HOST:PORT of the site's HL7 v2 (MLLP) endpoint for ORU^R01 results.")] = None,
    result_format: Annotated[list[str] | None, typer.Option(
        "--result-format", help="Also send results as 'hl7' (repeatable).")] = None,
    tls: Annotated[bool, typer.Option(
        "--tls", help="Issue the site a DICOM TLS client certificate; it then sends over "
        "the TLS port only (see `rdc sites cert`).")] = False,
    tls_out: Annotated[Path | None, typer.Option(
        "--tls-out", help="With --tls: directory for its key, certificate and CA files "
        "(default ./SITE-tls).")] = None,
    delivery_tls_ca: Annotated[Path | None, typer.Option(
        "--delivery-tls-ca", help="Deliver results over TLS, checking the site's SCP "
        "certificate against this PEM CA file.")] = None,
) -> None:
    """Register a county site.  Unknown senders are refused by default."""
    from core.sites import SiteSpec, add_site

    s = _settings()
    db = get_database(s.database_url)
    try:
        hl7_host, hl7_port = _host_port(hl7) if hl7 else (None, None)
        spec = SiteSpec(id=site_id, name=name, ae_title=ae_title, host=host, port=port,
                        allowed_addresses=tuple(allow or [host]),
                        accepts_results=accepts_results, inactivity_s=inactivity,
                        storage_commitment=storage_commitment, hl7_host=hl7_host,
                        hl7_port=hl7_port, result_formats=tuple(result_format or ()))
        with db.session() as sess:
            site = add_site(sess, spec, actor="cli")
            console.print(f"site {site.id!r} added: AE {site.ae_title}, "
                          f"allowed {', '.join(site.allowed_addresses)}")
            if delivery_tls_ca is not None:
                from core.site_certs import set_delivery_ca
                from rdc.sites_tls_cli import read_ca_file

                set_delivery_ca(sess, site.id, read_ca_file(delivery_tls_ca), actor="cli")
            if tls:
                from rdc.sites_tls_cli import issue_and_write

                issue_and_write(sess, s, site.id, tls_out)
    except RDCError as e:
        raise fail(e) from e


def _host_port(value: str) -> tuple[str, int]:
    from core.errors import InvalidInput

    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InvalidInput(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


sites_app.command("cert")(sites_cert)


@sites_app.command("list")
def sites_list() -> None:
    """List registered sites."""
    from core.sites import list_sites

    s = _settings()
    db = get_database(s.database_url)
    table = Table("id", "name", "AE title", "results to", "allowed senders", "results back",
                  "enabled")
    with db.session() as sess:
        for site in list_sites(sess):
            table.add_row(site.id, site.name, site.ae_title, f"{site.host}:{site.port}",
                          ", ".join(site.allowed_addresses), "yes" if site.accepts_results
                          else "no", "yes" if site.enabled else "no")
    console.print(table)


@sites_app.command("remove")
def sites_remove(site_id: Annotated[str, typer.Argument(help="Site id.")]) -> None:
    """Stop accepting studies from a site (its history is kept)."""
    from core.sites import remove_site

    s = _settings()
    db = get_database(s.database_url)
    try:
        with db.session() as sess:
            outcome = remove_site(sess, site_id, actor="cli")
    except RDCError as e:
        raise fail(e) from e
    console.print(f"site {site_id!r} {outcome}")


# Status, audit, demo --------------------------------------------------------------
@app.command()
def status() -> None:
    """Per site: instances received, spooled, in Orthanc, failed; studies by state."""
    from rdc.status import print_status

    s = _settings()
    print_status(s, console)


@app.command()
def demo(
    ct_slices: Annotated[int, typer.Option(min=1, max=2000, help="Slices of the CT.")] = 300,
    timeout: Annotated[float, typer.Option(
        help="Seconds to wait for Orthanc, and again for the AI pre-reads.")] = 600,
    ai: Annotated[bool, typer.Option("--ai/--no-ai",
                                     help="Wait for the AI pre-reads and show them.")] = True,
    pathology: Annotated[bool, typer.Option(
        "--pathology/--no-pathology",
        help="Also send three pathology cases (imported, C-STORE, frozen section).")] = True,
    slide_size: Annotated[str, typer.Option(
        help="Size of the imported demo slide, WIDTHxHEIGHT pixels.")] = "40960x30720",
    lab: Annotated[bool, typer.Option(
        "--lab/--no-lab", help="Also run the lab: HL7 orders from a county site, the "
                               "simulated analyzers, results back over HL7.")] = True,
) -> None:
    """Register a demo county site, send sample studies with DCMTK storescu, and show
    the AI pre-reads of the chest radiograph and the CT, the pathology cases and the
    lab's orders, runs and results back to the site."""
    from rdc.demo import run_demo
    from rdc.demo_lab import run_lab_demo
    from rdc.demo_pathology import parse_slide_size

    s = _settings()
    try:
        code = run_demo(s, console, ct_slices=ct_slices, timeout=timeout, ai=ai,
                        pathology=pathology, slide_size=parse_slide_size(slide_size))
        if lab:
            code = max(code, run_lab_demo(s, console, timeout=timeout))
    except RDCError as e:
        raise fail(e) from e
    raise typer.Exit(code)


@app.command()
def config() -> None:
    """Show the effective settings (secrets hidden)."""
    s = _settings()
    for k, v in sorted(s.public_summary().items()):
        console.print(f"{k} = {v}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()

