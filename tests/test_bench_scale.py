"""benchmarks/scale.py's arithmetic: the sizing an operator reads in the README."""

from __future__ import annotations

import sys

import pytest

from devkit.center import REPO

sys.path.insert(0, str(REPO))  # CI's pytest has no working directory on sys.path

from benchmarks.harness import BenchError
from benchmarks.scale import Results, Shape, sizing


def test_sizing_from_cpu_per_instance() -> None:
    # One study type of 100 instances, 1,000 a day, peak 3x, 60 % busy cores:
    # 1000/86400*3 = 0.0347 studies/s -> 3.47 instances/s * 20 ms = 0.069 s/s -> 0.116.
    s = sizing(20.0, 200.0, mix={"CT": (100, 1.0)})
    assert s.instances_per_study == 100
    assert s.instances_per_core_s == 50.0
    assert s.items_per_core_s == 5.0
    assert s.gateway_cores_per_1000 == pytest.approx(0.116, abs=0.001)
    assert s.worker_cores_per_1000 == pytest.approx(0.0116, abs=0.0001)
    # The mix is weighted by its shares.
    assert sizing(20.0, 200.0, mix={"a": (10, 0.5), "b": (30, 0.5)}).instances_per_study == 20


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_sizing_refuses_what_was_not_measured(bad: float) -> None:
    with pytest.raises(BenchError):
        sizing(bad, 100.0)
    with pytest.raises(BenchError):
        sizing(10.0, bad)


def test_sizing_takes_the_one_node_cpu() -> None:
    res = Results()
    res.ingest = {1: [Shape(1, 100, 2.0, 2.5, 1.5), Shape(1, 100, 2.0, 2.5, 1.7)],
                  2: [Shape(2, 100, 2.0, 2.5, 9.0)]}
    assert res.cpu_ms("ingest") == pytest.approx(16.0)
    shape = res.ingest[1][0]
    assert shape.per_s == 50.0 and shape.end_to_end_per_s == 40.0
    assert shape.cpu_ms_per_item == pytest.approx(15.0)
