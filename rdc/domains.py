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

DOMAINS: tuple[str, ...] = (
    "pacs_gateway",  # inbound: route
    "delivery",  # outbound: deliver
    "ai_models",  # AI pre-reads: ai_preread, ai_inference
    "ecg",  # ECG center: ecg_analysis
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
