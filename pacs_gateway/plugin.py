"""What the inbound gateway declares to the center (loaded by ``rdc/domains.py``).

The gateway's own job is ``route``: a worker applies the routing rules to a
completed study and creates the jobs those rules name.
"""

from __future__ import annotations

from core import jobs
from pacs_gateway.routing import run_route_job


def register() -> None:
    jobs.register_handler("route", run_route_job)
