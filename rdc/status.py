"""``rdc status``: the processes ``rdc up`` runs, what each site sent and where it is now."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from core.db import Database, get_database
from core.heartbeat import node_states
from core.orthanc_client import OrthancClient
from core.settings import Settings
from core.stats import failed_instances, job_counts, site_status, spool_counts
from rdc.status_processes import print_processes


def print_status(settings: Settings, console: Console) -> None:
    # First, and from a file: it still answers when the database does not.
    print_processes(settings, console)
    db = get_database(settings.database_url)
    print_nodes(db, console)
    with db.session() as s:
        rows = site_status(s)
        jobs = job_counts(s)
        failed = failed_instances(s)
    table = Table("site", "name", "received", "spooled", "in Orthanc", "failed", "studies",
                  title="Instances per site")
    for r in rows:
        studies = ", ".join(f"{k} {v}" for k, v in sorted(r.studies.items())) or "-"
        table.add_row(r.site_id + ("" if r.enabled else " (removed)"), r.name, str(r.received),
                      str(r.spooled), str(r.stored),
                      f"[red]{r.failed}[/red]" if r.failed else "0", studies)
    console.print(table)
    if failed:
        # Acknowledged to the sender, refused by Orthanc: the sender believes it was
        # delivered, so an operator has to act (the file is kept in spool/failed).
        ft = Table("site", "received", "study", "SOP instance", "receipt", "error",
                   title="[red]Acknowledged but not archived[/red] (newest first)")
        for f in failed:
            ft.add_row(f.site_id, f.received_at.strftime("%Y-%m-%d %H:%M:%S"), f.study_uid,
                       f.sop_instance_uid, f.receipt_id, f.error[:120])
        console.print(ft)
    spool = spool_counts(settings.spool_dir)
    console.print("Spool: " + ", ".join(
        f"[red]{k} {v}[/red]" if v and k != "ready" else f"{k} {v}" for k, v in spool.items()))
    if jobs:
        jt = Table("job kind", "states", title="Jobs")
        for kind, states in sorted(jobs.items()):
            jt.add_row(kind, ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
        console.print(jt)
    with OrthancClient.from_settings(settings, retries=0, timeout=3.0) as client:
        if client.is_alive():
            st = client.statistics()
            console.print(f"Orthanc: up, {st.get('CountStudies')} studies, "
                          f"{st.get('CountInstances')} instances, "
                          f"{st.get('TotalDiskSizeMB')} MB")
        else:
            console.print(f"[yellow]Orthanc: not reachable at {settings.orthanc_url}[/yellow]")


def print_nodes(db: Database, console: Console) -> None:
    """Every role of every node that reported to the center's database (core/heartbeat.py):
    on a multi-node center, the one place that shows all of them."""
    states = node_states(db)
    if not states:
        return
    now = datetime.now(UTC)
    table = Table("node", "role", "host", "pid", "state", "since", "detail", title="Nodes")
    colour = {"up": "green", "stopped": "yellow", "silent": "red"}
    for n in states:
        ago = int((now - n.since).total_seconds())
        since = f"{n.since:%Y-%m-%d %H:%M:%S} ({ago} s ago)"
        detail = ", ".join(f"{k} {v}" for k, v in sorted(n.detail.items()))
        table.add_row(n.node, n.role, n.host, str(n.pid),
                      f"[{colour[n.state]}]{n.state}[/{colour[n.state]}]", since, detail)
    console.print(table)
