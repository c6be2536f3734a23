"""Studies: configurations over seeds, the table of means and 95 % intervals, resuming, and the
study comparison. One 2-seed study on the tiny configuration goes through the command line
(`python -m ashem_engine study`); its table is checked against the runs' own summaries."""
from __future__ import annotations

import json
import os
import math
import statistics
from pathlib import Path

import pytest
import torch

from ashem_engine import events as ev
from ashem_engine.compare import read_compared, seeds_sweep
from ashem_engine.control import RunControl
from ashem_engine.data import load_corpus
from ashem_engine.settings import parse_override
from ashem_engine.stats import aggregate, t_quantile, two_sided_probability
from ashem_engine.study import StudyError, open_study, plan_study, reopen_study, study_runs
from ashem_engine.study_run import run_study
from ashem_engine.study_table import run_figures
from engine_support import single_thread  # noqa: F401  (autouse fixture)
from synthetic import synthetic_splits, write_corpus
from test_engine_cli import cli, env, interrupted_at_first_epoch, single_error_line
from tiny import TINY, tiny_settings

T_975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 9: 2.2622, 29: 2.0452,
         120: 1.9799}  # Student t quantiles, from printed tables
QUICK = ["--set", "stages.1.max_epochs=2", "--set", "stages.2.max_epochs=1"]


# -- the statistics ----------------------------------------------------------------------------

@pytest.mark.parametrize("dof, expected", sorted(T_975.items()))
def test_t_quantiles_match_the_printed_tables(dof, expected):
    assert t_quantile(dof) == pytest.approx(expected, abs=1e-4)
    assert two_sided_probability(expected, dof) == pytest.approx(0.95, abs=1e-5)


def test_aggregate_against_hand_values():
    a = aggregate([1.0, 2.0, 3.0, 4.0])
    assert a["n"] == 4 and a["mean"] == 2.5
    assert a["sd"] == pytest.approx(1.2910, abs=1e-4)
    assert a["half_width"] == pytest.approx(3.1824 * 1.2910 / 2, abs=1e-3)  # 2.0542
    assert (a["low"], a["high"]) == pytest.approx((2.5 - 2.0542, 2.5 + 2.0542), abs=1e-3)
    same = aggregate([7.0, 7.0])
    assert same["sd"] == 0.0 and same["half_width"] == 0.0
    one = aggregate([3.0])
    assert one["mean"] == 3.0 and one["sd"] is None and one["half_width"] is None
    assert aggregate([])["mean"] is None


def test_a_study_point_is_the_mean_over_seeds_with_its_interval():
    def sweep(ppl, macs):
        point = {"quantile": 0.5, "ppl": ppl, "macs_per_token": macs, "accuracy": 0.1,
                 "deep_ratio": 0.5, "spec_cost": 0.7, "honest_cost": 0.9}
        return {"name": "x", "split": "test",
                "series": [{"name": "s", "kind": "sweep", "points": [point]}]}
    combined = seeds_sweep("cfg", [sweep(10.0, 100.0), sweep(12.0, 104.0)])
    (point,) = combined["series"][0]["points"]
    assert point["ppl"] == pytest.approx(math.sqrt(120.0))  # exp(mean NLL): the geometric mean
    assert point["ppl_arithmetic_mean"] == 11.0
    assert point["macs_per_token"] == 102.0 and point["seeds"] == 2
    # sd of (10, 12) is sqrt(2): the half-width is t(0.975, 1) * sqrt(2) / sqrt(2)
    assert point["interval"]["ppl"]["half_width"] == pytest.approx(12.7062, abs=1e-4)
    assert point["interval"]["macs_per_token"]["half_width"] == pytest.approx(2 * 12.7062,
                                                                             abs=1e-3)


# -- the seed changes initialisation and shuffles, never the data ---------------------------

def test_the_data_does_not_depend_on_the_random_state(tmp_path):
    """The pipeline seeds python, numpy and torch before it loads the data; loading reads no
    random state, so every seed gets the same batches, vocabulary and split."""
    data = tiny_settings(tmp_path).data
    corpora = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        corpora.append(load_corpus(data))
    first, second = corpora
    assert first.vocab.words == second.vocab.words
    for split in ("train", "validation", "test"):
        assert torch.equal(first.batches[split].x, second.batches[split].x)
        assert torch.equal(first.batches[split].y, second.batches[split].y)


# -- the study through the command line ------------------------------------------------------

def toml_value(value) -> str:
    return json.dumps(value)  # strings, numbers and lists as TOML reads them


def write_tiny_toml(path: Path, data_dir: Path) -> Path:
    """conftest's TINY settings as a settings file."""
    tables: dict = {}
    stages: dict = {}
    for item in [*TINY, f"data.path={data_dir}"]:
        parts, value = parse_override(item)
        if parts[0] == "stages":
            stages.setdefault(int(parts[1]), {})[parts[2]] = value
        else:
            tables.setdefault(parts[0], {})[parts[1]] = value
    lines = []
    for table, keys in tables.items():
        lines += [f"[{table}]", *(f"{k} = {toml_value(v)}" for k, v in keys.items())]
    for number in sorted(stages):
        lines += ["[[stages]]", *(f"{k} = {toml_value(v)}" for k, v in stages[number].items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def file_times(directory: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in sorted(directory.rglob("*"))}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A 2-seed study of the tiny configuration, made by the command line."""
    tmp = tmp_path_factory.mktemp("study")
    data = write_corpus(tmp / "data", synthetic_splits())
    config = write_tiny_toml(tmp / "tiny.toml", data)
    args = ["study", str(config), "--seeds", "2", *QUICK, "--dir", "the-study"]
    p = cli(tmp, *args, timeout=300)
    assert p.returncode == 0, p.stderr
    return tmp, tmp / "the-study", args, p.stdout


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def finished_runs(study_dir: Path) -> list[Path]:
    return sorted(p.parent for p in (study_dir / "runs").rglob("summary.json"))


def test_the_study_directory_holds_one_run_per_seed_and_its_plan(study):
    _, study_dir, _, out = study
    runs = finished_runs(study_dir)
    assert [r.parent.relative_to(study_dir).as_posix() for r in runs] == \
        ["runs/tiny/seed-42", "runs/tiny/seed-43"]  # the default run.seed 42, + 0 and + 1
    for run, seed in zip(runs, (42, 43)):
        summary = read(run / "summary.json")
        assert summary["status"] == "finished" and run.name.endswith("-tiny")
        settings = read(run / "settings.json")
        assert settings["run"]["seed"] == seed and settings["run"]["name"] == "tiny"
        assert settings["stages"][0]["max_epochs"] == 2  # --set reached every run
    plan = read(study_dir / "study.json")
    (config,) = plan["configurations"]
    assert config["name"] == "tiny" and config["seeds"] == [42, 43] and plan["seeds"] == 2
    assert config["settings"]["stages"][1]["max_epochs"] == 1
    assert plan["overrides"] == ["stages.1.max_epochs=2", "stages.2.max_epochs=1"]
    assert "[study 2/2] tiny seed 43: finished" in out and "final.ppl" in out


def test_the_table_is_the_mean_and_interval_of_the_per_seed_values(study):
    _, study_dir, _, _ = study
    summaries = [read(r / "summary.json") for r in finished_runs(study_dir)]
    sweeps = [read(r / "sweep.json") for r in finished_runs(study_dir)]
    expected = {"final.ppl": [s["final"]["ppl"] for s in summaries],
                "final.accuracy": [s["final"]["accuracy"] for s in summaries],
                "final.shallow_ratio": [s["final"]["exit_ratios"][0] for s in summaries],
                "final.spec_cost": [s["final"]["compute_cost"] for s in summaries],
                "final.honest_cost": [s["final"]["honest_cost"] for s in summaries],
                "final.macs_per_token": [s["final"]["macs_per_token"] for s in summaries],
                "stage_1.best_val_ppl": [s["stages"][0]["best_val_ppl"] for s in summaries],
                "stage_2.best_val_ppl": [s["stages"][1]["best_val_ppl"] for s in summaries],
                "stage_1_alone.ppl": [next(x for x in w["series"] if x["name"].startswith(
                    "stage-1 model"))["points"][0]["ppl"] for w in sweeps],
                "seconds": [s["seconds"] for s in summaries]}
    expected["final.ppl_minus_stage_1_alone"] = [
        a - b for a, b in zip(expected["final.ppl"], expected["stage_1_alone.ppl"])]
    for signal, q, name in (("classifier", 0.5, "classifier.q0.50"), ("softmax", 1.0, "all_deep")):
        at_q = [next(p["ppl"] for x in w["series"] if x.get("signal") == signal
                     and x["kind"] == "sweep" for p in x["points"] if p["quantile"] == q)
                for w in sweeps]
        expected[f"sweep.{name}.ppl_minus_stage_1_alone"] = [
            a - b for a, b in zip(at_q, expected["stage_1_alone.ppl"])]
    (config,) = read(study_dir / "table.json")["configurations"]
    for name, values in expected.items():
        figure = config["figures"][name]
        mean, sd = statistics.mean(values), statistics.stdev(values)
        assert figure["n"] == 2, name
        assert figure["mean"] == pytest.approx(mean, rel=1e-12), name
        assert figure["sd"] == pytest.approx(sd, rel=1e-9, abs=1e-12), name
        assert figure["half_width"] == pytest.approx(12.7062 * sd / math.sqrt(2), rel=1e-4,
                                                     abs=1e-12), name
        assert [v["value"] for v in figure["values"]] == values, name
        assert [v["seed"] for v in figure["values"]] == [42, 43]
    assert ("training_macs" in config["figures"]) == ("training_macs" in summaries[0])
    csv_rows = (study_dir / "table.csv").read_text().splitlines()
    assert csv_rows[0].startswith("configuration,figure,n,mean,sd,ci95_half_width")
    ppl_row = next(r for r in csv_rows if r.startswith("tiny,final.ppl,")).split(",")
    assert float(ppl_row[3]) == config["figures"]["final.ppl"]["mean"]
    assert [float(v) for v in ppl_row[-2:]] == expected["final.ppl"]
    assert "| final.ppl |" in (study_dir / "table.md").read_text()


def test_the_seed_changed_the_model_but_not_the_data(study):
    _, study_dir, _, _ = study
    runs = finished_runs(study_dir)
    finals = [read(r / "summary.json")["final"] for r in runs]
    assert finals[0]["ppl"] != finals[1]["ppl"]
    data = []
    for run, final in zip(runs, finals):
        events = ev.read_events(run / "events.jsonl")
        started = next(e for e in events if isinstance(e, ev.RunStarted))
        stage_1 = next(e for e in events if isinstance(e, ev.StageStarted))
        data.append((started.vocab_size, started.train_tokens, started.val_tokens,
                     started.test_tokens, stage_1.training_tokens, final["tokens"]))
    assert data[0] == data[1]


def test_rerunning_the_command_skips_the_finished_runs(study):
    tmp, study_dir, args, _ = study
    before = file_times(study_dir / "runs")
    again = cli(tmp, *args, timeout=120)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("finished already, skipped") == 2
    resumed = cli(tmp, "study", "--resume", "the-study", timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("finished already, skipped") == 2
    assert file_times(study_dir / "runs") == before


def test_a_command_that_disagrees_with_the_study_is_refused(study):
    tmp, _, args, _ = study
    other = [*args]
    other[other.index("--seeds") + 1] = "3"
    line = single_error_line(cli(tmp, *other))
    assert "the-study" in line and "tiny × 2 seeds" in line and "tiny × 3 seeds" in line
    changed = single_error_line(cli(tmp, *args, "--set", "model.dim=32"))
    assert "model.dim" in changed


def test_the_study_comparison_has_each_points_mean_and_interval(study):
    _, study_dir, _, _ = study
    (compared,) = read_compared(study_dir)
    sweeps = [read(r / "sweep.json") for r in finished_runs(study_dir)]
    assert compared["name"] == "tiny" and compared["seeds"] == 2
    assert [s["name"] for s in compared["series"]] == [s["name"] for s in sweeps[0]["series"]]
    for k, series in enumerate(compared["series"]):
        for i, point in enumerate(series["points"]):
            ppls = [w["series"][k]["points"][i]["ppl"] for w in sweeps]
            macs = [w["series"][k]["points"][i]["macs_per_token"] for w in sweeps]
            assert point["ppl"] == pytest.approx(statistics.geometric_mean(ppls))
            assert point["macs_per_token"] == pytest.approx(statistics.mean(macs))
            assert point["interval"]["ppl"]["half_width"] == pytest.approx(
                12.7062 * statistics.stdev(ppls) / math.sqrt(2), rel=1e-4, abs=1e-9)


# -- resuming an interrupted run, in process ------------------------------------------------

class CancelAfterFirstEpoch:
    """A sink that cancels the run once its first epoch has ended (as Ctrl-C would)."""

    def __init__(self):
        self.control = None

    def new_control(self) -> RunControl:
        self.control = RunControl()
        return self.control

    def __call__(self, event) -> None:
        if isinstance(event, ev.EpochEnded) and self.control is not None:
            self.control.cancel()
            self.control = None  # only the first run


def test_an_interrupted_run_resumes_in_its_own_directory(tmp_path):
    base = tiny_settings(tmp_path)
    config = write_tiny_toml(tmp_path / "tiny.toml", Path(base.data.path))
    plan = open_study(plan_study([str(config)], 1, ["stages.2.max_epochs=1"],
                                 str(tmp_path / "s")))
    cancel, notes = CancelAfterFirstEpoch(), []
    stopped = run_study(plan, [cancel], cancel.new_control, notes.append)
    assert stopped.status == "cancelled"
    (run,) = study_runs(plan)
    assert run.status == "cancelled" and run.run_dir is not None
    done = run_study(reopen_study(plan.directory), [], RunControl, notes.append)
    assert done.status == "finished"
    (again,) = study_runs(plan)
    assert again.run_dir == run.run_dir and again.finished
    assert [n.action for n in notes] == ["start", "cancelled", "resume", "finished", "table"]
    started = [e for e in ev.read_events(run.run_dir / "events.jsonl")
               if isinstance(e, ev.RunStarted)]
    assert [e.resumed for e in started] == [False, True]
    (table,) = done.table["configurations"]
    assert table["figures"]["final.ppl"]["n"] == 1
    assert table["figures"]["final.ppl"]["half_width"] is None  # one seed: no interval
    summary = json.loads((run.run_dir / "summary.json").read_text())
    assert table["figures"]["final.ppl"]["mean"] == summary["final"]["ppl"]
    assert run_figures(summary, {})["final.ppl"] == summary["final"]["ppl"]


def test_a_study_runs_seed_by_seed_so_a_stopped_study_stays_paired(tmp_path):
    base = tiny_settings(tmp_path)
    first = write_tiny_toml(tmp_path / "first.toml", Path(base.data.path))
    second = write_tiny_toml(tmp_path / "second.toml", Path(base.data.path))
    plan = plan_study([str(first), str(second)], 2, [], str(tmp_path / "s"))
    order = [(r.config.name, r.seed) for r in study_runs(plan)]
    assert order == [("first", 42), ("second", 42), ("first", 43), ("second", 43)]


def test_a_study_stopped_between_runs_starts_none(tmp_path):
    base = tiny_settings(tmp_path)
    config = write_tiny_toml(tmp_path / "tiny.toml", Path(base.data.path))
    plan = open_study(plan_study([str(config)], 2, [], str(tmp_path / "s")))

    def cancelled() -> RunControl:
        control = RunControl()
        control.cancel()
        return control
    assert run_study(plan, [], cancelled).status == "cancelled"
    assert not (plan.directory / "runs").exists()


def test_ctrl_c_stops_the_study_and_the_run_stays_resumable(tmp_path):
    data = write_corpus(tmp_path / "data", synthetic_splits())
    config = write_tiny_toml(tmp_path / "tiny.toml", data)
    args = ["study", str(config), "--seeds", "2", "--dir", "s", "--set", "stages.1.max_epochs=50",
            "--set", "stages.1.patience=50", "--set", "run.progress_events_per_epoch=1"]
    code, out, err = interrupted_at_first_epoch(args, tmp_path)
    assert code == 130, err
    assert "Traceback" not in err
    assert "tiny seed 42: cancelled" in out and "ashem-engine study --resume s" in out
    first, second = study_runs(reopen_study(tmp_path / "s"))
    assert first.status == "cancelled" and (first.run_dir / "progress.pt").is_file()
    assert second.run_dir is None  # not started


# -- bad input: one line, exit 2 ---------------------------------------------------------------

def test_bad_study_input_is_one_line_and_exit_2(tmp_path):
    data = write_corpus(tmp_path / "data", synthetic_splits())
    config = write_tiny_toml(tmp_path / "tiny.toml", data)
    (tmp_path / "other").mkdir()
    twin = write_tiny_toml(tmp_path / "other" / "tiny.toml", data)
    assert "--seeds 0" in single_error_line(cli(tmp_path, "study", str(config), "--seeds", "0"))
    missing = single_error_line(cli(tmp_path, "study", "nowhere.toml", "--seeds", "2"))
    assert "nowhere.toml" in missing and "does not exist" in missing
    twins = single_error_line(cli(tmp_path, "study", str(config), str(twin), "--seeds", "2"))
    assert "two configurations named 'tiny'" in twins
    assert "--seeds" in single_error_line(cli(tmp_path, "study", str(config)))
    alone = single_error_line(cli(tmp_path, "study", "--resume", "x", str(config)))
    assert "--resume" in alone
    assert "no study.json" in single_error_line(cli(tmp_path, "study", "--resume", "data"))
    busy = single_error_line(cli(tmp_path, "study", str(config), "--seeds", "1",
                                 "--dir", "data"))
    assert "not a study directory" in busy
    bad_key = single_error_line(cli(tmp_path, "study", str(config), "--seeds", "1",
                                    "--set", "model.depth=4"))
    assert "model.depth" in bad_key
    assert not (tmp_path / "studies").exists()  # nothing was started


def test_plan_errors_are_study_errors(tmp_path):
    with pytest.raises(StudyError, match="at least 1"):
        plan_study([], 0, [], None)
    with pytest.raises(StudyError, match="at least one settings file"):
        plan_study([], 1, [], None)


def test_differences_are_paired_by_seed_against_the_first_configuration():
    from ashem_engine.study_table import (paired_differences, study_overview, table_csv,
                                          table_markdown)

    def config(name, seeds, ppl, macs):
        def figure(values):
            pairs = list(zip(seeds, values))
            return {**aggregate(values), "values": [{"seed": s, "value": v} for s, v in pairs]}
        return {"name": name, "file": f"{name}.toml", "seeds": seeds, "runs": [],
                "figures": {"final.ppl": figure(ppl), "training_macs": figure(macs)}}
    a = config("a", [42, 43, 44], [1000.0, 980.0, 1010.0], [3e13, 3e13, 3e13])
    b = config("b", [42, 43], [990.0, 975.0], [4e13, 5e13])  # seed 44 not finished
    (ppl, macs) = paired_differences([a, b])
    assert (ppl["configuration"], ppl["against"], ppl["figure"]) == ("b", "a", "final.ppl")
    assert [v["value"] for v in ppl["values"]] == [-10.0, -5.0]
    assert ppl["mean"] == -7.5 and ppl["n"] == 2
    assert ppl["half_width"] == pytest.approx(12.7062 * statistics.stdev([-10, -5]) /
                                              math.sqrt(2), rel=1e-4)
    assert macs["mean"] == pytest.approx(1.5e13)
    table = {"study": "s", "seeds": 3, "interval": "t", "finished_runs": 5, "runs": 6,
             "figures": {"final.ppl": "", "training_macs": ""}, "configurations": [a, b],
             "differences": [ppl, macs]}
    md = table_markdown(table)
    assert "## Paired by seed: each configuration minus a" in md
    assert "| b | final.ppl | 2 | -7.5 |" in md
    assert "| training_macs | 30 T ± 0 T (n=3) | 45 T ± 63.53 T (n=2) |" in md
    assert "b - a,final.ppl,2,-7.5," in table_csv(table)
    overview = study_overview(table)  # what the command prints: no per-configuration parts
    assert "## Paired by seed" in overview and "| b | final.ppl |" in overview
    assert "## a (a.toml" not in overview and "## a (a.toml" in md
    assert paired_differences([a]) == [] and paired_differences([]) == []


def test_a_study_grows_by_added_configurations_and_keeps_its_runs(tmp_path):
    data = write_corpus(tmp_path / "data", synthetic_splits())
    config = write_tiny_toml(tmp_path / "tiny.toml", data)
    first = cli(tmp_path, "study", str(config), "--seeds", "1", *QUICK, "--dir", "s",
                "--quiet", timeout=300)
    assert first.returncode == 0, first.stderr
    (tmp_path / "more").mkdir()
    added = tmp_path / "more" / "tiny-lr.toml"
    added.write_text(config.read_text().replace("[[stages]]", "[[stages]]\nlr = 2e-3", 1))
    kept = file_times(tmp_path / "s" / "runs" / "tiny")
    grown = cli(tmp_path, "study", "--add", "s", str(added), "--quiet", timeout=300)
    assert grown.returncode == 0, grown.stderr
    assert "tiny seed 42: finished already, skipped" in grown.stdout
    assert file_times(tmp_path / "s" / "runs" / "tiny") == kept  # not run again
    plan = read(tmp_path / "s" / "study.json")
    assert [c["name"] for c in plan["configurations"]] == ["tiny", "tiny-lr"]
    assert plan["configurations"][1]["settings"]["stages"][0]["max_epochs"] == 2  # its --set
    assert plan["configurations"][1]["settings"]["stages"][0]["lr"] == 2e-3
    table = read(tmp_path / "s" / "table.json")
    (ppl,) = [d for d in table["differences"] if d["figure"] == "final.ppl"]
    ours, theirs = (c["figures"]["final.ppl"]["mean"] for c in table["configurations"])
    assert (ppl["configuration"], ppl["against"]) == ("tiny-lr", "tiny")
    assert ppl["mean"] == pytest.approx(theirs - ours) and ppl["n"] == 1
    assert "## Paired by seed" in grown.stdout
    twice = single_error_line(cli(tmp_path, "study", "--add", "s", str(added)))
    assert "already has a configuration named 'tiny-lr'" in twice
    assert "--add" in single_error_line(cli(tmp_path, "study", "--add", "s", str(added),
                                            "--seeds", "2"))
    assert [c["name"] for c in read(tmp_path / "s" / "study.json")["configurations"]] == \
        ["tiny", "tiny-lr"]  # refused commands wrote nothing


def test_one_process_at_a_time_runs_a_study(study, tmp_path):
    import subprocess
    import sys
    from ashem_engine.study import LOCK_FILE, running
    _, study_dir, _, _ = study
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (study_dir / LOCK_FILE).write_text(f"{other.pid}\n")
        before = (study_dir / "study.json").read_text()
        for args in (["--resume", str(study_dir)], ["--add", str(study_dir), "x.toml"]):
            line = single_error_line(cli(tmp_path, "study", *args))
            assert f"is being run by process {other.pid}" in line, args
        assert (study_dir / "study.json").read_text() == before
        with pytest.raises(StudyError, match="is being run by process"):
            with running(study_dir):
                pass
    finally:
        other.kill()
        other.wait()
    with running(study_dir):  # its process has ended: the lock is taken over, then let go
        assert (study_dir / LOCK_FILE).read_text().split() == [str(os.getpid())]
    assert not (study_dir / LOCK_FILE).exists()
