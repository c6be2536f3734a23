"""The threshold sweep, the exit classifier and the comparison of runs."""
from __future__ import annotations

import json
import math

import pytest
import torch

from ashem_engine.compare import (ComparisonError, combine, load_comparison, mark_pareto,
                                  pareto_rows)
from ashem_engine.cascade import Cascade, evaluate
from ashem_engine.data import Batches
from ashem_engine.model import EarlyExitLM
from ashem_engine.names import PROPAGATED, SEQUENCE, TOKEN
from ashem_engine.settings import ModelSettings
from ashem_engine.signals import train_exit_classifier
from ashem_engine.sweep import sweep, sweep_quantiles, train_signal
from engine_support import single_thread  # noqa: F401  (autouse fixture)

CFG = ModelSettings(dim=16, heads=2, ffn_hidden=32)
VOCAB = 50


def batches(seed: int, n: int = 3) -> Batches:
    g = torch.Generator().manual_seed(seed)
    return Batches(torch.randint(0, VOCAB, (n, 4, 8), generator=g),
                   torch.randint(0, VOCAB, (n, 4, 8), generator=g))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return EarlyExitLM(VOCAB, 4, CFG).eval()


@pytest.mark.parametrize("mode", [TOKEN, SEQUENCE, PROPAGATED])
def test_routed_fraction_is_monotone_in_the_threshold(model, mode):
    mining, report = batches(1), batches(2)
    cascade = Cascade.of([2, 4], [0.05], (mode,))
    classifiers = train_signal(model, mining, cascade, "classifier", seed=0)
    series = sweep(model, mining, report, cascade, ["softmax", "classifier"], 21, {"classifier": classifiers})
    assert [s["signal"] for s in series] == ["softmax", "classifier"]
    for s in series:
        points = s["points"]
        assert len(points) == 21
        assert [p["quantile"] for p in points] == sweep_quantiles(21)
        deep = [p["deep_ratio"] for p in points]
        thresholds = [p["thresholds"][0] for p in points]
        assert all(a <= b for a, b in zip(deep, deep[1:])), deep
        assert all(a <= b for a, b in zip(thresholds, thresholds[1:]))
        assert deep[0] == 0.0 and deep[-1] == 1.0  # q = 0: all leave; q = 1: all go deep
        assert 0.2 < deep[10] < 0.8  # calibrated on another split, still about half
        for p in points:
            assert sum(p["exit_ratios"]) == pytest.approx(1.0)
            assert math.isfinite(p["ppl"]) and 0 <= p["accuracy"] <= 1


@pytest.mark.parametrize("mode", [TOKEN, PROPAGATED])
@pytest.mark.parametrize("signal", ["softmax", "classifier"])
def test_sweep_points_equal_a_routed_evaluation(model, mode, signal):
    """The sweep's shortcuts (one pass for routing-independent modes; the first exit
    computed once when propagating) give evaluate's numbers."""
    mining, report = batches(1), batches(2)
    cascade = Cascade.of([2, 4], [0.05], (mode,))
    classifiers = train_signal(model, mining, cascade, "classifier", seed=0)
    (series,) = sweep(model, mining, report, cascade, [signal], 5, {"classifier": classifiers})
    for p in series["points"]:
        r = evaluate(model, report, Cascade.of(
            [2, 4], p["thresholds"], (mode,),
            classifiers if signal == "classifier" else None))
        assert p["ppl"] == pytest.approx(r.ppl, rel=1e-5)
        assert p["accuracy"] == pytest.approx(r.accuracy)
        assert p["exit_ratios"] == pytest.approx(r.exit_ratios)
        assert p["honest_cost"] == pytest.approx(r.honest_cost)
        assert p["spec_cost"] == pytest.approx(r.spec_cost)


def test_softmax_costs_grow_with_depth_and_the_classifier_is_cheaper(model):
    mining, report = batches(1), batches(2)
    cascade = Cascade.of([2, 4], [0.05], (TOKEN,))
    classifiers = train_signal(model, mining, cascade, "classifier", seed=0)
    soft, clf = sweep(model, mining, report, cascade, ["softmax", "classifier"], 6, {"classifier": classifiers})
    costs = [p["honest_cost"] for p in soft["points"]]
    assert all(a <= b for a, b in zip(costs, costs[1:]))
    assert soft["points"][-1]["honest_cost"] > 1.0  # everyone deep: two heads each
    assert clf["points"][-1]["honest_cost"] < soft["points"][-1]["honest_cost"]


def test_exit_classifier_learns_the_confidence_and_is_deterministic():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2000, 16, generator=g)
    target = torch.sigmoid(h @ torch.linspace(-1, 1, 16) + 0.3)
    a = train_exit_classifier(h, target, steps=300, seed=1)
    b = train_exit_classifier(h, target, steps=300, seed=1)
    assert torch.equal(a.score(h), b.score(h))
    ranks = lambda v: v.argsort().argsort().float()  # noqa: E731
    rho = torch.corrcoef(torch.stack([ranks(a.score(h)), ranks(target)]))[0, 1]
    assert rho > 0.95


def point(ppl, macs, **kw):
    return {"quantile": None, "thresholds": [], "ppl": ppl, "accuracy": 0.1,
            "exit_ratios": [1.0], "deep_ratio": 0.0, "spec_cost": 1.0, "honest_cost": 1.0,
            "macs_per_token": macs, "pareto": False, **kw}


def test_pareto_marks_the_points_nothing_beats():
    pts = [point(100, 5), point(90, 6), point(95, 7), point(80, 9), point(80, 10),
           point(float("nan"), 1)]
    mark_pareto(pts)
    assert [p["pareto"] for p in pts] == [True, True, False, True, False, False]


def test_combine_labels_runs_and_flags_mixed_splits(tmp_path):
    a = {"name": "spec", "split": "validation", "series": [
        {"name": "ASHEM · max-softmax", "kind": "sweep", "points": [point(100, 5)]}]}
    b = {"name": "sound", "split": "test", "series": [
        {"name": "stage-1 model (2 layers)", "kind": "baseline", "points": [point(90, 4)]}]}
    c = combine([a, b])
    assert [s["label"] for s in c["series"]] == ["spec · ASHEM · max-softmax",
                                                 "sound · stage-1 model (2 layers)"]
    assert c["mixed_splits"]
    assert [r["label"] for r in pareto_rows(c)] == ["sound · stage-1 model (2 layers)"]
    assert a["series"][0]["points"][0]["pareto"] is False  # inputs are not modified
    run = tmp_path / "run"
    run.mkdir()
    (run / "sweep.json").write_text(json.dumps(a))
    assert load_comparison([run])["series"][0]["points"][0]["pareto"] is True


def test_comparison_errors_are_one_line(tmp_path):
    with pytest.raises(ComparisonError, match="does not exist"):
        load_comparison([tmp_path / "nope"])
    with pytest.raises(ComparisonError, match="no sweep.json"):
        load_comparison([tmp_path])
    (tmp_path / "sweep.json").write_text("{not json")
    with pytest.raises(ComparisonError, match="not valid JSON") as e:
        load_comparison([tmp_path])
    assert "\n" not in str(e.value)
