"""``rdc deploy``: the files of a multi-node center (rdc/deploy.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from core.errors import RDCError
from rdc.console import console, fail

deploy_app = typer.Typer(help="Write the configuration of a multi-node center.",
                         no_args_is_help=True)


@deploy_app.command("systemd")
def systemd(
    nodes: Annotated[Path, typer.Option("--nodes", help="The node list (TOML; see "
                                        "docs/DEPLOYMENT.md, 'Several nodes').")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the files.")] =
        Path("deploy-out"),
) -> None:
    """Each node's rdc.toml and systemd units, and the HAProxy configuration."""
    from rdc.deploy import load, write

    try:
        topo = load(nodes)
        written = write(topo, out)
    except RDCError as e:
        raise fail(e) from e
    console.print(f"{len(written)} files for {len(topo.nodes)} nodes under {out}:")
    for node in topo.nodes:
        console.print(f"  {node.name} ({node.address}): {', '.join(node.roles)}: copy "
                      f"{out / node.name / 'rdc.toml'} to {node.home}/rdc.toml (mode 0600) "
                      f"and the units to /etc/systemd/system/")
    console.print(f"  balancer ({topo.balancer.address}): {out / 'balancer' / 'haproxy.cfg'}"
                  " to /etc/haproxy/haproxy.cfg")
