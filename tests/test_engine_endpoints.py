"""Endpoints fixed before the runs: intervals on NLL (the PPL back-transformed), the analysis
plan (validated, recorded in study.json, its comparisons primary and the rest exploratory),
test NLL at an equal inference cost, the honest-cost difference on absolute MACs, and the
compute-matched view. The studies here are made of hand-written finished runs: nothing trains."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from pathlib import Path

import pytest

from ashem_engine import events as ev
from ashem_engine.stats import aggregate, paired_nll_difference, ppl_interval
from ashem_engine.study import StudyError, grow_study, open_study, plan_study, reopen_study
from ashem_engine.study_curves import compute_matched, default_grid, mean_curve_band
from ashem_engine.study_plan import attach_plan, nll_at_cost, read_plan
from ashem_engine.study_table import paired_differences, table_csv, write_tables
from test_engine_cli import cli, single_error_line
from test_engine_study import write_tiny_toml

T4, T2, T1 = 2.7764, 4.3027, 12.7062  # t(0.975, dof) for 4, 2 and 1 degrees of freedom


# -- intervals on NLL ----------------------------------------------------------------------

def test_a_ppl_interval_is_taken_on_nll_and_shown_back_as_ppl():
    nlls = [4.0, 4.1, 4.2, 4.3, 4.4]  # sd sqrt(0.1 / 4) = 0.158114
    got = ppl_interval([math.exp(x) for x in nlls])
    half = T4 * 0.158114 / math.sqrt(5)  # 0.19632
    assert got["n"] == 5 and got["mean_nll"] == pytest.approx(4.2)
    assert got["half_nll"] == pytest.approx(half, abs=1e-4)
    assert got["ppl"] == pytest.approx(66.686, abs=1e-3)  # exp(4.2): the geometric mean
    assert got["ppl_lo"] == pytest.approx(math.exp(4.2 - half), rel=1e-4)  # 54.80
    assert got["ppl_hi"] == pytest.approx(math.exp(4.2 + half), rel=1e-4)  # 81.15
    one = ppl_interval([50.0])
    assert one["ppl"] == pytest.approx(50.0) and one["ppl_lo"] is None and one["half_nll"] is None
    assert ppl_interval([])["ppl"] is None
    assert ppl_interval([0.0, -3.0, 20.0])["n"] == 1  # no NLL for a PPL that is not positive


def test_two_seeds_far_apart_never_give_a_ppl_bound_below_0():
    ppls = [1.5, 1e6]
    assert aggregate(ppls)["low"] < 0  # the arithmetic interval reaches below 0 ...
    got = ppl_interval(ppls)
    assert 0 < got["ppl_lo"] < got["ppl"] < got["ppl_hi"]  # ... the one on NLL does not
    assert got["ppl"] == pytest.approx(math.sqrt(1.5e6))
    beyond = ppl_interval([1.0, 1e300])  # exp(mean + half) is beyond a float: no error
    assert beyond["ppl_hi"] == math.inf and beyond["ppl_lo"] >= 0


def test_a_paired_nll_difference_and_its_ppl_ratio():
    a = {1: math.exp(4.0), 2: math.exp(4.5), 3: math.exp(5.0)}
    b = {1: math.exp(4.1), 2: math.exp(4.4), 3: math.exp(5.2), 4: 99.0}  # seed 4: unpaired
    got = paired_nll_difference(a, b)  # differences -0.1, +0.1, -0.2
    half = T2 * 0.152753 / math.sqrt(3)  # 0.37946
    assert got["n"] == 3 and got["diff"] == pytest.approx(-0.2 / 3)
    assert got["half"] == pytest.approx(half, abs=1e-4)
    assert got["ratio"] == pytest.approx(math.exp(-0.2 / 3))
    assert (got["ratio_lo"], got["ratio_hi"]) == pytest.approx(
        (math.exp(-0.2 / 3 - half), math.exp(-0.2 / 3 + half)), rel=1e-4)
    assert paired_nll_difference(a, {})["diff"] is None


# -- test NLL at an equal inference cost --------------------------------------------------

def test_nll_at_cost_interpolates_linearly_in_macs_between_neighbouring_points():
    points = [{"quantile": 0.0, "macs_per_token": 100.0, "ppl": math.exp(5.0)},
              {"quantile": 0.5, "macs_per_token": 200.0, "ppl": math.exp(4.0)},
              {"quantile": 1.0, "macs_per_token": 300.0, "ppl": math.exp(3.5)}]
    assert nll_at_cost(points, 150.0)[0] == pytest.approx(4.5)
    assert nll_at_cost(points, 275.0)[0] == pytest.approx(3.625)
    assert nll_at_cost(points, 100.0)[0] == pytest.approx(5.0)
    for outside in (99.0, 301.0):
        nll, why = nll_at_cost(points, outside)
        assert nll is None and "outside the swept range" in why


# -- a study of hand-written finished runs ----------------------------------------------------

PLAIN = {"a": 10e6, "b": 5e6}  # each configuration's plain model's MACs per token


def sweep_of(signal_points: list[tuple[float, float]], plain: float) -> dict:
    return {"plain_macs_per_token": plain, "series": [
        {"name": "ASHEM · max-softmax", "kind": "sweep", "signal": "softmax",
         "points": [{"quantile": k / 2, "ppl": ppl, "macs_per_token": macs,
                     "honest_cost": macs / plain} for k, (macs, ppl) in
                    enumerate(signal_points)]}]}


def fake_run(study_dir: Path, config: str, seed: int, ppl: float, macs: float,
             sweep: dict, epochs: list[tuple[float, float]] = ()) -> None:
    """A finished run: its summary, sweep and (when given) EpochEnded events (MACs, PPL)."""
    run = study_dir / "runs" / config / f"seed-{seed}" / f"20260101T000000Z-{config}"
    run.mkdir(parents=True)
    (run / "settings.json").write_text("{}")
    final = {"ppl": ppl, "accuracy": 0.1, "macs_per_token": macs,
             "honest_cost": macs / sweep["plain_macs_per_token"]}
    (run / "summary.json").write_text(json.dumps({"status": "finished", "final": final,
                                                  "seconds": 60.0}))
    (run / "sweep.json").write_text(json.dumps(sweep))
    lines = [json.dumps(ev.EpochEnded(
        stage=1, epoch=k, train_ppl=val, val_ppl=val, val_acc=0.1, improved=True,
        patience_counter=0, patience=3, best_epoch=k, best_val_ppl=val, seconds=1.0,
        run_training_macs=m).to_dict()) for k, (m, val) in enumerate(epochs, start=1)]
    (run / "events.jsonl").write_text("".join(line + "\n" for line in lines))


def hand_study(tmp_path: Path) -> Path:
    """Configurations a (against) and b over seeds 42, 43; every run finished."""
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    files = [str(write_tiny_toml(tmp_path / f"{name}.toml", data)) for name in ("a", "b")]
    study = open_study(plan_study(files, 2, [], str(tmp_path / "s"))).directory
    for seed, (pa, pb) in zip((42, 43), ((math.exp(5.0), math.exp(4.9)),
                                         (math.exp(5.2), math.exp(4.9)))):
        fake_run(study, "a", seed, pa, 10e6, sweep_of([], PLAIN["a"]))
        # b's softmax sweep brackets a's 10 M MACs per token: NLL 4.6 there at seed 42
        sweep = sweep_of([(4e6, math.exp(5.4)), (8e6, math.exp(4.8)), (12e6, math.exp(4.4))],
                         PLAIN["b"])
        if seed == 43:
            sweep = sweep_of([(4e6, math.exp(5.4)), (8e6, math.exp(4.8))], PLAIN["b"])
        fake_run(study, "b", seed, pb, 6e6, sweep)
    return study


PLAN = """description = "b against a"
[[primary]]
name = "b as run"
configuration = "b"
against = "a"
endpoint = "test_nll"
[[primary]]
name = "b at a's cost"
configuration = "b"
against = "a"
endpoint = "test_nll_at_cost"
signal = "softmax"
[[exploratory]]
configuration = "b"
against = "a"
endpoint = "final.accuracy"
[exit]
quantile = 0.5
chosen_on = "validation"
"""


def test_a_plan_is_recorded_and_its_rows_are_primary_the_rest_exploratory(tmp_path):
    study = hand_study(tmp_path)
    plan_file = tmp_path / "plan.toml"
    plan_file.write_text(PLAN)
    p = cli(tmp_path, "study", "--resume", "s", "--plan", "plan.toml", "--quiet")
    assert p.returncode == 0, p.stderr
    recorded = json.loads((study / "study.json").read_text())["analysis_plan"]
    assert recorded["sha256"] == hashlib.sha256(plan_file.read_bytes()).hexdigest()
    assert recorded["content"]["primary"][0]["against"] == "a"
    assert recorded["path"] == "plan.toml" and recorded["recorded_at"].endswith("Z")
    assert recorded["finished_runs"] == 4  # recorded after the runs: the table says so
    table = json.loads((study / "table.json").read_text())
    as_run, at_cost = table["primary"]
    assert (as_run["name"], as_run["n"]) == ("b as run", 2)
    assert as_run["diff"] == pytest.approx(-0.2)  # 4.9 - 5.0 and 4.9 - 5.2
    assert as_run["half"] == pytest.approx(T1 * 0.1, rel=1e-4)
    assert as_run["ratio_lo"] == pytest.approx(math.exp(-0.2 - T1 * 0.1), rel=1e-4)
    assert at_cost["n"] == 1 and at_cost["diff"] == pytest.approx(4.6 - 5.0)
    (missing,) = at_cost["missing"]  # seed 43's sweep stops at 8 M: a's 10 M is outside it
    assert missing["seed"] == 43 and "outside the swept range" in missing["why"]
    (accuracy,) = table["exploratory"]  # the plan's own test_nll row is not repeated
    assert accuracy["section"] == "exploratory" and accuracy["on"] == "figure"
    assert accuracy["diff"] == 0.0 and accuracy["ratio"] is None
    md = (study / "table.md").read_text()
    assert f"## Primary endpoints (fixed in plan.toml sha256:{recorded['sha256'][:12]})" in md
    assert md.index("## Primary endpoints") < md.index("## Exploratory") < md.index("| figure |")
    assert "| b as run | b − a | test_nll | -0.2000 ± 1.2706 (n=2) |" in md
    assert "after 4 of 4 runs had finished" in md and "chosen validation" in md
    assert "primary:test_nll_at_cost.softmax" in (study / "table.csv").read_text()
    assert "## Primary endpoints" in p.stdout  # the study's overview keeps it
    again = cli(tmp_path, "study", "--resume", "s", "--plan", "plan.toml", "--quiet")
    assert again.returncode == 0, again.stderr  # the same plan again: nothing changes
    assert json.loads((study / "study.json").read_text())["analysis_plan"] == recorded
    plan_file.write_text(PLAN.replace("validation", "prespecified"))
    changed = single_error_line(cli(tmp_path, "study", "--resume", "s", "--plan", "plan.toml"))
    assert "already has an analysis plan" in changed
    assert json.loads((study / "study.json").read_text())["analysis_plan"] == recorded


def test_without_a_plan_every_comparison_is_exploratory(tmp_path):
    study = hand_study(tmp_path)
    table = write_tables(reopen_study(study))
    assert table["analysis_plan"] is None and table["primary"] == []
    (row,) = table["exploratory"]  # each configuration against the first, on test NLL
    assert (row["configuration"], row["against"], row["endpoint"]) == ("b", "a", "test_nll")
    a, b = table["configurations"]
    assert a["test_nll"]["mean_nll"] == pytest.approx(5.1)
    assert b["test_nll"]["ppl"] == pytest.approx(math.exp(4.9))
    md = (study / "table.md").read_text()
    assert "## Primary endpoints" not in md
    assert "No analysis plan: every comparison here is exploratory." in md
    assert "| a | 5.1000 ± 1.2706 (n=2) |" in md


def test_a_plan_is_kept_when_the_study_grows_and_older_studies_read_without_one(tmp_path):
    study = hand_study(tmp_path)
    (tmp_path / "plan.toml").write_text(PLAN)
    planned = attach_plan(reopen_study(study), read_plan(str(tmp_path / "plan.toml")))
    assert reopen_study(study).analysis_plan == planned.analysis_plan
    (tmp_path / "more").mkdir()
    extra = write_tiny_toml(tmp_path / "more" / "c.toml", tmp_path / "data")
    grown = grow_study(study, [str(extra)])
    assert grown.analysis_plan == planned.analysis_plan
    assert json.loads((study / "study.json").read_text())["analysis_plan"] == \
        planned.analysis_plan
    saved = json.loads((study / "study.json").read_text())
    del saved["analysis_plan"]  # a study written before plans were
    (study / "study.json").write_text(json.dumps(saved))
    assert reopen_study(study).analysis_plan is None
    assert write_tables(reopen_study(study))["primary"] == []


@pytest.mark.parametrize("text, expected", [
    (PLAN.replace('configuration = "b"\nagainst = "a"\nendpoint = "test_nll"\n',
                  'configuration = "z"\nagainst = "a"\nendpoint = "test_nll"\n'),
     "names configuration 'z', which is not in the study (it has a, b)"),
    (PLAN.replace('endpoint = "test_nll"\n', 'endpoint = "test_ppl"\n', 1),
     "endpoint 'test_ppl' is unknown; allowed: test_nll, test_nll_at_cost"),
    (PLAN.replace("[exit]", "[exit"), "not valid TOML"),
    (PLAN.replace('signal = "softmax"\n', ""), "test_nll_at_cost needs signal"),
    (PLAN.replace('chosen_on = "validation"', 'chosen_on = "test"'), "never the test split"),
    (PLAN.replace("[[primary]]", "[[primry]]"), "unknown key 'primry'"),
])
def test_a_bad_plan_is_one_line_and_exit_2_and_starts_nothing(tmp_path, text, expected):
    data = tmp_path / "data"
    data.mkdir()
    files = [str(write_tiny_toml(tmp_path / f"{name}.toml", data)) for name in ("a", "b")]
    (tmp_path / "plan.toml").write_text(text)
    line = single_error_line(cli(tmp_path, "study", *files, "--seeds", "1", "--dir", "s",
                                 "--plan", "plan.toml"))
    assert "--plan plan.toml" in line and expected in line, line
    assert not (tmp_path / "s").exists()


def test_a_plan_file_that_cannot_be_read_is_a_study_error(tmp_path):
    with pytest.raises(StudyError, match="cannot be read"):
        read_plan(str(tmp_path / "nowhere.toml"))
    (tmp_path / "empty.toml").write_text("")
    with pytest.raises(StudyError, match=r"no \[\[primary\]\] comparison"):
        read_plan(str(tmp_path / "empty.toml"))


# -- the honest-cost difference ----------------------------------------------------------------

def figure(values: dict) -> dict:
    return {**aggregate(list(values.values())),
            "values": [{"seed": s, "value": v} for s, v in values.items()]}


def test_the_paired_cost_cell_pairs_absolute_macs_not_honest_costs():
    """An 8-layer model (10 M MACs per token, honest cost 1.0 of itself) against a 4-layer one
    (5.5 M, honest cost 1.1 of its own 5 M plain model): their honest costs differ by +0.1,
    their costs by -4.5 M MACs, -0.45 of the 8-layer model's."""
    def config(name, macs, plain):
        return {"name": name, "seeds": [42, 43], "figures": {
            "final.macs_per_token": figure({42: macs, 43: macs}),
            "final.honest_cost": figure({42: macs / plain, 43: macs / plain}),
            "plain_macs_per_token": figure({42: plain, 43: plain})}}
    deep, shallow = config("deep", 10e6, 10e6), config("shallow", 5.5e6, 5e6)
    rows = {d["figure"]: d for d in paired_differences([deep, shallow])}
    assert "final.honest_cost" not in rows
    assert rows["final.macs_per_token"]["mean"] == pytest.approx(-4.5e6)
    assert rows["final.honest_cost_vs_reference_plain"]["mean"] == pytest.approx(-0.45)
    table = {"study": "s", "seeds": 2, "interval": "t", "finished_runs": 4, "runs": 4,
             "figures": {}, "configurations": [deep, shallow],
             "differences": list(rows.values())}
    assert "shallow - deep,final.honest_cost_vs_reference_plain,2,-0.45" in table_csv(table)
    results = bench_study_results()
    assert "| shallow | – | -4.500 ± 0.000 (n=2) | -0.450 ± 0.000 (n=2) | – |" in \
        results.tables(table)


def bench_study_results():
    path = Path(__file__).resolve().parents[1] / "bench" / "study_results.py"
    spec = importlib.util.spec_from_file_location("study_results", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- the compute-matched view -----------------------------------------------------------------

def curve(points: list[tuple[float, float]]) -> dict:
    return {"name": "x", "points": [{"stage": 1, "epoch": k, "val_ppl": math.exp(nll),
                                     "run_training_macs": m}
                                    for k, (m, nll) in enumerate(points, start=1)]}


def test_the_compute_matched_band_is_each_runs_best_so_far_over_seeds():
    first = curve([(10, 5.0), (20, 4.6), (30, 4.8), (40, 4.0)])  # epoch 3 worse: stays 4.6
    second = curve([(10, 5.2), (20, 4.4), (25, 4.2)])  # stops at 25
    band = mean_curve_band([first, second], [5, 10, 20, 30, 40, 50])
    assert [b["n"] for b in band] == [0, 2, 2, 1, 1, 0]
    assert band[0]["nll_mean"] is None  # no validation by 5 MACs
    at_10 = band[1]
    assert at_10["nll_mean"] == pytest.approx(5.1)
    assert at_10["nll_hi"] - at_10["nll_mean"] == pytest.approx(T1 * 0.1, rel=1e-4)
    assert at_10["ppl_mean"] == pytest.approx(math.exp(5.1))
    assert at_10["ppl_lo"] == pytest.approx(math.exp(5.1 - T1 * 0.1), rel=1e-4)
    assert band[2]["nll_mean"] == pytest.approx(4.5)
    assert band[3]["nll_mean"] == pytest.approx(4.6) and band[3]["nll_lo"] is None
    assert band[4]["ppl_mean"] == pytest.approx(math.exp(4.0))
    assert default_grid([first, second], points=4) == [10, 20, 30, 40]


def test_a_studys_compute_matched_view_reads_its_runs_events(tmp_path):
    study = hand_study(tmp_path)
    for path in (study / "runs").rglob("events.jsonl"):
        run = path.parent
        seed = int(run.parent.name.removeprefix("seed-"))
        shift = 0.2 if seed == 43 else 0.0
        epochs = [(1e12, 6.0 + shift), (2e12, 5.5 + shift)]
        lines = [json.dumps(ev.EpochEnded(
            stage=1, epoch=k, train_ppl=1.0, val_ppl=math.exp(nll), val_acc=0.1, improved=True,
            patience_counter=0, patience=3, best_epoch=k, best_val_ppl=1.0, seconds=1.0,
            run_training_macs=m).to_dict()) for k, (m, nll) in enumerate(epochs, start=1)]
        path.write_text("".join(line + "\n" for line in lines))
    view = compute_matched(study, [1e12, 2e12, 3e12])
    a, b = view["configurations"]
    assert (a["name"], a["runs"]) == ("a", 2)
    assert [x["n"] for x in a["band"]] == [2, 2, 0]
    assert a["band"][1]["nll_mean"] == pytest.approx(5.6)
    results = bench_study_results()
    table = results.compute_matched_table(view)
    assert "| 2 | 5.6000 ± 1.2706 (n=2), PPL 270.4 [75.9, 963.5] |" in table
    assert table.splitlines()[-1].endswith("| – | – |")
