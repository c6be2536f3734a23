"""The benches of docs/RESULTS.md still run: on a tiny finished run, in seconds."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ashem_engine.run import run_ashem
from synthetic import synthetic_splits, write_corpus
from tiny import ONE_EPOCH, TINY, sets, tiny_corpus, tiny_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_sound_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    settings = tiny_settings(tmp, "mining.split=train", "evaluation.split=test",
                             "stages.2.context=sequence", "evaluation.inference=as_trained",
                             "stages.2.freeze_head=true", "stages.2.max_epochs=2",
                             "evaluation.sweep_points=5")
    result = run_ashem(settings, [], corpus=tiny_corpus(settings))
    assert result.status == "finished", result.error
    return settings, result.run_dir


def bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_bench_inference_checks_the_real_exit_and_times_every_path(tiny_sound_run):
    settings, run_dir = tiny_sound_run
    p = bench("bench/bench_inference.py", str(run_dir), "--data", settings.data.path,
              "--batches", "2", "--repeats", "1", "--threads", "1")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    for path in ("2-layer model (stage 1)", "4-layer model, no exit",
                 "routed, compute everything (softmax)", "real early exit (softmax)",
                 "routed, compute everything (classifier)", "real early exit (classifier)"):
        assert any(line.startswith(path) for line in lines), p.stdout
    assert sum("same exits" in line for line in lines) == 2


def test_protocols_table_from_finished_runs(tiny_sound_run, tmp_path):
    _, run_dir = tiny_sound_run
    csv_file = tmp_path / "all.csv"
    p = bench("bench/protocols.py", "--table", str(run_dir), "--csv", str(csv_file))
    assert p.returncode == 0, p.stderr
    assert "| tiny | ASHEM · max-softmax | 0.50 |" in p.stdout
    assert "| tiny | stage-1 model (2 layers) |" in p.stdout
    rows = csv_file.read_text().splitlines()
    assert len(rows) == 1 + 5 + 5 + 1 + 1  # header, two sweeps, as run, stage-1 model
    p = bench("bench/protocols.py", "--table", str(tmp_path / "missing"))
    assert p.returncode == 2 and "does not exist" in p.stderr


def test_bench_app_quick_runs_a_headless_and_an_app_run(tmp_path):
    data = write_corpus(tmp_path / "data", synthetic_splits())
    p = bench("bench/bench_app.py", "--quick", *sets(*TINY, f"data.path={data}", *ONE_EPOCH,
                                                     "evaluation.sweep_points=0"))
    assert p.returncode == 0, p.stderr
    assert "[1/1] headless" in p.stdout and "[1/1] app" in p.stdout
    assert "stage 1 batch ms" in p.stdout and "UI thread CPU" in p.stdout


def test_bench_scale_times_fp32_and_bf16_in_one_and_two_processes(tmp_path):
    data = write_corpus(tmp_path / "data", synthetic_splits())
    p = bench("bench/bench_scale.py", "--repeats", "1",
              *sets(*TINY, f"data.path={data}", *ONE_EPOCH))
    assert p.returncode == 0, p.stderr
    rows = {line[:24].strip(): line for line in p.stdout.splitlines()[1:]}
    assert set(rows) == {"1 × fp32", "1 × bf16", "2 × fp32", "2 × bf16"}
    assert all("[" in row for row in rows.values())  # a rate with its range per stage


def test_study_results_formats_a_study_table(tmp_path):
    from ashem_engine.stats import aggregate

    def figure(values):
        return {**aggregate(values), "values": [{"seed": 42 + i, "value": v}
                                                for i, v in enumerate(values)]}
    table = {"study": "s", "finished_runs": 4, "runs": 4, "configurations": [
        {"name": name, "figures": {"final.ppl": figure(ppl), "seconds": figure([60.0, 180.0]),
                                   "training_macs": figure([3e13, 3e13])}}
        for name, ppl in (("a", [1000.0, 990.0]), ("b", [1010.0, 1000.0]))],
        "differences": [{"configuration": "b", "against": "a", "figure": "final.ppl",
                         **figure([10.0, 10.0])}]}
    (tmp_path / "table.json").write_text(json.dumps(table))
    p = bench("bench/study_results.py", str(tmp_path))
    assert p.returncode == 0, p.stderr
    out = p.stdout
    assert "### s: 4 of 4 runs" in out
    assert "| a | 995.0 ± 63.5 (n=2) | – | – | 30.0 ± 0.0 (n=2) | – | – | 2.0 |" in out
    assert "| b | +10.0 ± 0.0 (n=2) | – | – |" in out
    against = bench("bench/study_results.py", "--against", "a", str(tmp_path))
    assert against.returncode == 0, against.stderr
    assert "minus a's test PPL" in against.stdout
    assert "| b | +10.0 ± 0.0 (n=2) | – | – | +0.0 ± 0.0 (n=2) |" in against.stdout
    unknown = bench("bench/study_results.py", "--against", "c", str(tmp_path))
    assert unknown.returncode != 0
    assert unknown.stderr.strip() == "--against c: not a configuration of s (it has a, b)"


def test_study_results_tables_a_sweep_over_seeds(tmp_path):
    def point(q, ppl, cost):
        return {"quantile": q, "ppl": ppl, "honest_cost": cost}
    for seed, ppl in ((42, 100.0), (43, 110.0)):
        run = tmp_path / "runs" / "a" / f"seed-{seed}" / "20261126T000000Z-a"
        run.mkdir(parents=True)
        (run / "settings.json").write_text("{}")
        series = [{"name": "ASHEM · exit classifier", "points": [
            point(0.0, ppl, 0.9), point(0.05, 1.0, 1.0), point(0.1, ppl - 1, 0.95)]},
            {"name": "ASHEM · as run", "points": [point(None, ppl + 5, 1.5)]}]
        (run / "sweep.json").write_text(json.dumps({"series": series}))
    (tmp_path / "table.json").write_text(json.dumps(
        {"study": "s", "finished_runs": 2, "runs": 2, "configurations": []}))
    p = bench("bench/study_results.py", "--sweep", "a", str(tmp_path))
    assert p.returncode == 0, p.stderr
    assert "| ASHEM · exit classifier | 0.00 | 105.0 ± 63.5 (n=2) | 0.900 |" in p.stdout
    assert "| ASHEM · exit classifier | 0.10 | 104.0 ± 63.5 (n=2) | 0.950 |" in p.stdout
    assert "| ASHEM · as run | – | 110.0 ± 63.5 (n=2) | 1.500 |" in p.stdout
    assert "0.05" not in p.stdout  # only the tabled quantiles
    missing = bench("bench/study_results.py", "--sweep", "b", str(tmp_path))
    assert missing.returncode != 0 and "--sweep b: no finished run of b" in missing.stderr
