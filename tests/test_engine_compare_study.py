"""A study as `ashem --compare STUDY_DIR` sees it (ashem_engine.compare.study_sweeps): each
configuration's seeds as one sweep, its PPL the geometric mean over seeds with the 95 % interval
taken on the mean NLL and shown back as PPL (never below 0), its series named as the runs'
sweep.json names them. Study directories are written by hand here; no training."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest

from ashem_engine.compare import combine, read_compared, seeds_sweep
from ashem_engine.settings import Settings
from ashem_engine.study import STUDY_FILE, Configuration, StudyPlan, seed_dir

T_975 = {1: 12.7062, 4: 2.7764}  # Student t(0.975, dof), from printed tables


def write_study_of(root, seeds_sweeps: dict, finished=True):
    """A study directory as `ashem-engine study` leaves it: per configuration (name -> one
    sweep.json dict per seed), one run per seed (42, 43, ...) holding that sweep."""
    base = Settings()
    configs = tuple(Configuration(name, f"{name}.toml", base.replace(
        run=dataclasses.replace(base.run, name=name))) for name in seeds_sweeps)
    seeds = len(next(iter(seeds_sweeps.values())))
    root.mkdir(parents=True)
    plan = StudyPlan(root, configs, seeds)
    (root / STUDY_FILE).write_text(json.dumps(plan.to_json()), encoding="utf-8")
    for name, sweeps in seeds_sweeps.items():
        for seed, sweep in zip(range(42, 42 + seeds), sweeps):
            run = seed_dir(root, name, seed) / f"20261126T120000Z-{name}"
            run.mkdir(parents=True)
            (run / "sweep.json").write_text(json.dumps({**sweep, "name": name}),
                                            encoding="utf-8")
            (run / "settings.json").write_text("{}", encoding="utf-8")
            status = "finished" if finished else "running"
            (run / "summary.json").write_text(json.dumps({"status": status}),
                                              encoding="utf-8")
    return root


def point(ppl: float, macs: float = 100.0, quantile=None) -> dict:
    return {"quantile": quantile, "ppl": ppl, "macs_per_token": macs, "accuracy": 0.1,
            "deep_ratio": 0.5, "spec_cost": 0.7, "honest_cost": 0.9}


def sweep(*series: tuple[str, str, list[dict]]) -> dict:
    return {"name": "x", "split": "test",
            "series": [{"name": name, "kind": kind, "signal": None, "points": points}
                       for name, kind, points in series]}


def one_point(ppl: float, macs: float = 100.0, name: str = "s") -> dict:
    return sweep((name, "baseline", [point(ppl, macs)]))


def only_point(sweeps: list[dict]) -> dict:
    (p,) = seeds_sweep("cfg", sweeps)["series"][0]["points"]
    return p


def test_the_ppl_is_the_geometric_mean_and_its_interval_is_on_the_nll():
    p = only_point([one_point(10.0), one_point(1000.0)])
    assert p["ppl"] == pytest.approx(100.0)  # exp((ln 10 + ln 1000) / 2)
    nll = p["interval"]["nll"]
    # NLLs ln 10 and ln 1000: sd = ln(100) / sqrt(2), half = t · sd / sqrt(2) = t · ln(10)
    half = T_975[1] * math.log(10.0)
    assert nll["n"] == 2 and nll["mean_nll"] == pytest.approx(math.log(100.0))
    assert nll["half_nll"] == pytest.approx(half, rel=1e-5)
    assert nll["ppl_lo"] == pytest.approx(100.0 * math.exp(-half), rel=1e-4)
    assert nll["ppl_hi"] == pytest.approx(100.0 * math.exp(half), rel=1e-4)
    assert 0 < nll["ppl_lo"] < 10.0 and nll["ppl_hi"] > 1000.0
    # the PPLs' own t interval, still there for older readers, reaches far below 0
    assert p["interval"]["ppl"]["low"] < -5000 and p["ppl_arithmetic_mean"] == 505.0


def test_five_seeds_against_hand_values():
    ppls = [100.0, 110.0, 120.0, 130.0, 140.0]
    nlls = [math.log(x) for x in ppls]
    mean = sum(nlls) / 5
    sd = math.sqrt(sum((x - mean) ** 2 for x in nlls) / 4)
    half = T_975[4] * sd / math.sqrt(5)
    p = only_point([one_point(x) for x in ppls])
    assert p["ppl"] == pytest.approx(math.exp(mean)) and p["seeds"] == 5
    assert p["interval"]["nll"]["ppl_lo"] == pytest.approx(math.exp(mean - half), rel=1e-5)
    assert p["interval"]["nll"]["ppl_hi"] == pytest.approx(math.exp(mean + half), rel=1e-5)
    assert p["ppl"] < p["ppl_arithmetic_mean"] == pytest.approx(120.0)


def test_macs_and_linear_figures_keep_their_arithmetic_mean_and_t_interval():
    p = only_point([one_point(10.0, macs=100.0), one_point(12.0, macs=104.0)])
    assert p["macs_per_token"] == 102.0 and p["accuracy"] == pytest.approx(0.1)
    assert p["interval"]["macs_per_token"]["half_width"] == pytest.approx(2 * T_975[1],
                                                                          rel=1e-4)


def test_one_seed_has_its_own_ppl_and_no_interval():
    p = only_point([one_point(905.0)])
    assert p["ppl"] == 905.0 and p["seeds"] == 1
    assert p["interval"]["nll"]["ppl_lo"] is None and p["interval"]["nll"]["ppl_hi"] is None


def test_a_diverged_seed_makes_the_mean_infinite_with_no_interval():
    p = only_point([one_point(10.0), one_point(math.inf)])
    assert p["ppl"] == math.inf and p["interval"]["nll"] is None


def test_the_pareto_flags_are_over_the_geometric_means():
    # same cost: "spread" has PPLs 10 and 1000 (arithmetic mean 505, geometric 100), "steady"
    # 300 at both seeds; on the geometric means "spread" is the better one
    spread = seeds_sweep("spread", [one_point(10.0), one_point(1000.0)])
    steady = seeds_sweep("steady", [one_point(300.0), one_point(300.0)])
    flags = [s["points"][0]["pareto"] for s in combine([spread, steady])["series"]]
    assert flags == [True, False]


def test_each_series_is_named_as_its_runs_sweep_names_it(tmp_path):
    ashem = sweep(("ASHEM · max-softmax", "sweep", [point(30.0, 90.0, 0.0),
                                                     point(28.0, 120.0, 1.0)]),
                  ("ASHEM · as run", "baseline", [point(29.0, 100.0)]),
                  ("stage-1 model (2 layers)", "baseline", [point(31.0, 60.0)]))
    joint = sweep(("joint early exit · max-softmax", "sweep", [point(33.0, 90.0, 0.0),
                                                                point(30.0, 120.0, 1.0)]),
                  ("joint early exit · as run", "baseline", [point(31.0, 100.0)]))
    plain = sweep(("plain model (4 layers)", "baseline", [point(32.0, 120.0)]))
    study = write_study_of(tmp_path / "study", {"ashem": [ashem] * 2, "joint": [joint] * 2,
                                                "scratch-4": [plain] * 2})
    labels = [s["label"] for s in combine(read_compared(study))["series"]]
    assert labels == ["ashem · ASHEM · max-softmax", "ashem · ASHEM · as run",
                      "ashem · stage-1 model (2 layers)",
                      "joint · joint early exit · max-softmax", "joint · joint early exit · as run",
                      "scratch-4 · plain model (4 layers)"]
