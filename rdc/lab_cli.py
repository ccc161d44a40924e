"""``rdc lab``: everything the web app does for the lab, from a terminal.

Each part of the lab has its own module of commands (``rdc/lab_<part>_cli.py``); they
are merged here into one ``rdc lab`` group, so ``rdc lab --help`` lists them all.
"""

from __future__ import annotations

import typer

from rdc import (
    lab_analyzer_cli,
    lab_critical_cli,
    lab_custody_cli,
    lab_orders_cli,
    lab_qc_cli,
    lab_review_cli,
    lab_rules_cli,
)

lab_app = typer.Typer(help="Lab center: orders, specimens and boxes, analyzers, QC, "
                           "autoverification, review, critical values.",
                      no_args_is_help=True)
for _part in (lab_orders_cli, lab_custody_cli, lab_analyzer_cli, lab_qc_cli, lab_rules_cli,
              lab_review_cli, lab_critical_cli):
    lab_app.add_typer(_part.app)
