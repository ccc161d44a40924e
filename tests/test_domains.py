"""The declared plug-in points: rdc/domains.py is the one list of what runs.

Every job kind the shipped routing rules name must be declared by a listed domain, and a
worker refuses to start on rules that name a kind nothing runs (instead of failing each
routed study later with "no handler registered").
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, Center
from core import jobs
from core.settings import Settings
from rdc.domains import DOMAINS, load_domains, undeclared_routing_targets
from reports import registry as report_registry


def test_every_domain_declares_through_its_plugin_module() -> None:
    load_domains()
    for name in DOMAINS:
        module = importlib.import_module(f"{name}.plugin")
        assert callable(module.register), name
    assert {"route", "deliver", "ai_preread", "ai_inference", "ecg_analysis"} <= \
        jobs.registered_kinds()
    # Report prefill and templates come from the domains too; reports itself names none.
    assert report_registry.prefill_provider("ai_findings") is not None
    assert report_registry.prefill_provider("ecg_rhythm") is not None
    assert any(d.parts[-2:] == ("ecg", "report_templates") for d in report_registry.template_dirs())


def test_the_shipped_routing_rules_name_only_declared_job_kinds() -> None:
    assert undeclared_routing_targets(Settings().routing_rules_path()) == []


def test_a_kind_cannot_be_claimed_twice() -> None:
    def first(session: object, job: object) -> None: ...

    def second(session: object, job: object) -> None: ...

    jobs.register_handler("test-claimed-once", first)  # type: ignore[arg-type]
    jobs.register_handler("test-claimed-once", first)  # type: ignore[arg-type]  # idempotent
    with pytest.raises(ValueError, match="already handled"):
        jobs.register_handler("test-claimed-once", second)  # type: ignore[arg-type]


def _rules_naming(tmp_path: Path, kind: str) -> Path:
    rules = tmp_path / "rules.toml"
    rules.write_text(f"""version = 1

[[rule]]
id = "slides"
match = {{ modality = ["SM"] }}
job = "{kind}"
queue = "inference"
priority = "routine"
""")
    return rules


def test_a_rule_naming_an_undeclared_kind_is_reported(tmp_path: Path) -> None:
    problems = undeclared_routing_targets(_rules_naming(tmp_path, "wsi_analysis"))
    assert len(problems) == 1
    assert "'slides'" in problems[0] and "'wsi_analysis'" in problems[0]
    assert "rdc/domains.py" in problems[0]


def test_the_worker_refuses_to_start_on_such_rules(center: Center, tmp_path: Path) -> None:
    env = dict(center.env, RDC_ROUTING_RULES=str(_rules_naming(tmp_path, "wsi_analysis")))
    done = subprocess.run([sys.executable, "-m", "rdc", "worker"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "wsi_analysis" in done.stderr and "nothing runs" in done.stderr
