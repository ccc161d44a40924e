"""The center's domains and services, declared in one place.

Each name below is a package with a ``plugin`` module whose ``register()`` declares
what the package contributes: job handlers (``core.jobs``), periodic tasks, report
prefill and figures, worklist kinds.  Nothing registers itself as a side effect of
being imported, so a job kind runs in a worker exactly when its package is listed
here.  Adding a reading domain (pathology, lab) means its package, one line here and
its migration; see the README's "Adding a reading domain".
"""

from __future__ import annotations

import importlib
import threading
from pathlib import Path

DOMAINS: tuple[str, ...] = (
    "pacs_gateway",  # inbound: route
    "delivery",  # outbound: deliver
    "ai_models",  # AI pre-reads: ai_preread, ai_inference
    "ecg",  # ECG center: ecg_analysis
    "pathology",  # pathology center: pathology_intake, frozen-section escalation
    "lab",  # lab center: lab_run (QC + autoverification), critical-value escalation
)

_loaded = False
_lock = threading.Lock()


def load_domains() -> None:
    """Call every listed package's ``plugin.register()`` once per process."""
    global _loaded
    with _lock:
        if _loaded:
            return
        for name in DOMAINS:
            module = importlib.import_module(f"{name}.plugin")
            module.register()
        _loaded = True


def undeclared_routing_targets(rules_path: Path) -> list[str]:
    """Routing rules whose job kind no listed domain declares, as readable lines.

    A rule names its target by job kind; a worker would otherwise only find out when a
    study is routed ("no handler registered"), long after a typo went live.  Jobs on a
    human queue (the reading worklist) are done by people and need no handler.
    """
    from core import jobs
    from pacs_gateway.routing import load_rules

    load_domains()
    known = jobs.registered_kinds()
    return [f"rule {rule.id!r} in {rules_path} routes to job kind {rule.job!r}, which no "
            f"domain in rdc/domains.py declares (declared: {', '.join(sorted(known))})"
            for rule in load_rules(rules_path).rules
            if rule.queue not in jobs.HUMAN_QUEUES and rule.job not in known]
