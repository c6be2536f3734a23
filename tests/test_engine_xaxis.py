"""What a chart against compute reads: EpochEnded's run totals (tokens_trained,
run_training_macs, run_seconds) over a two-stage run, after a resume and under torchrun; the
confidences' log-spaced bins (ThresholdComputed.log_*); a study's mean val-PPL curves with
their 95 % intervals (study_curves)."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from engine_support import single_thread  # noqa: F401  (autouse fixture)
from ashem_engine import events as ev
from ashem_engine.control import RunControl
from ashem_engine.mining import fitted_histogram, log_histogram
from ashem_engine.run import resume_ashem, run_ashem
from ashem_engine.settings import Settings
from ashem_engine.study import STUDY_FILE, Configuration, StudyPlan, seed_dir
from ashem_engine.study_curves import (X_FIELDS, curve_of, kept_epochs, run_curve,
                                       study_curves)
from tiny import tiny_corpus, tiny_settings

T_975_1 = 12.7062  # Student t(0.975, 1 degree of freedom), from printed tables
RUN_FIELDS = ("stage", "epoch", "tokens_trained", "run_training_macs")


@pytest.fixture(scope="module")
def two_stages(tmp_path_factory):
    """A tiny two-stage run, uninterrupted: its settings and events."""
    settings = tiny_settings(tmp_path_factory.mktemp("xaxis"))
    events: list = []
    result = run_ashem(settings, [events.append], corpus=tiny_corpus(settings))
    assert result.status == "finished", result.error
    return settings, events


def epochs_of(events) -> list:
    return [e for e in events if isinstance(e, ev.EpochEnded)]


def test_the_run_totals_add_up_every_epoch_of_every_stage(two_stages):
    _, events = two_stages
    epochs = epochs_of(events)
    assert {e.stage for e in epochs} == {1, 2}
    per_epoch = {e.stage: e.training_tokens for e in events if isinstance(e, ev.StageStarted)}
    tokens = macs = 0
    for e in epochs:
        tokens += per_epoch[e.stage]
        macs += e.training_macs
        assert e.tokens_trained == tokens
        assert e.run_training_macs == macs
    assert per_epoch[2] < per_epoch[1]  # stage 2 trains on the hard tokens alone
    ended = [e for e in events if isinstance(e, ev.StageEnded)]
    assert epochs[-1].run_training_macs == pytest.approx(sum(s.training_macs for s in ended))


def test_the_run_totals_and_clock_rise_epoch_by_epoch(two_stages):
    _, events = two_stages
    epochs = epochs_of(events)
    for a, b in zip(epochs, epochs[1:]):
        assert b.tokens_trained > a.tokens_trained
        assert b.run_training_macs > a.run_training_macs
        assert b.run_seconds >= a.run_seconds
    assert all(e.run_seconds == pytest.approx(e.t, abs=0.01) for e in epochs)  # no resume
    assert "run_seconds" in ev.TIMING_FIELDS  # the clock's; the totals are compared


def run_fields(events) -> list[tuple]:
    return [tuple(getattr(e, k) for k in RUN_FIELDS) for e in kept_epochs(events)]


@pytest.mark.parametrize("where", ["stage1-epoch2", "stage2-epoch1", "after-mining"])
def test_a_resumed_run_counts_on_as_if_uninterrupted(two_stages, where):
    settings, expected = two_stages
    cancel_at = {
        "stage1-epoch2": lambda e: isinstance(e, ev.EpochEnded) and (e.stage, e.epoch) == (1, 2),
        "stage2-epoch1": lambda e: isinstance(e, ev.EpochEnded) and (e.stage, e.epoch) == (2, 1),
        "after-mining": lambda e: isinstance(e, ev.HardExamplesCollected),
    }[where]
    control, first_events = RunControl(), []

    def sink(event):
        first_events.append(event)
        if cancel_at(event):
            control.cancel()

    first = run_ashem(settings, [sink], control, corpus=tiny_corpus(settings))
    assert first.status == "cancelled"
    second_events: list = []
    second = resume_ashem(first.run_dir, [second_events.append], corpus=tiny_corpus(settings))
    assert second.status == "finished", second.error
    assert run_fields(first_events + second_events) == run_fields(expected)
    resumed = [e for e in second_events if isinstance(e, ev.EpochEnded)]
    before = next(e for e in second_events if isinstance(e, ev.RunStarted)).seconds_before
    assert before > 0 and all(e.run_seconds == pytest.approx(before + e.t, abs=0.05)
                              for e in resumed)
    logged = ev.read_events(first.run_dir / "events.jsonl")  # what a chart reads back
    assert run_fields(logged) == run_fields(expected)


def test_a_progress_file_from_before_the_totals_resumes_with_them_unknown(two_stages,
                                                                         tmp_path):
    settings, _ = two_stages
    settings = settings.replace(run=dataclasses.replace(settings.run,
                                                        runs_dir=str(tmp_path / "runs")))
    control = RunControl()

    def sink(event):
        if isinstance(event, ev.EpochEnded) and (event.stage, event.epoch) == (1, 2):
            control.cancel()

    first = run_ashem(settings, [sink], control, corpus=tiny_corpus(settings))
    progress = first.run_dir / "progress.pt"
    saved = torch.load(progress, weights_only=True)
    del saved["totals"]  # as written before them
    torch.save(saved, progress)
    events: list = []
    second = resume_ashem(first.run_dir, [events.append], corpus=tiny_corpus(settings))
    assert second.status == "finished", second.error
    epochs = epochs_of(events)
    assert epochs and all(e.tokens_trained is None and e.run_training_macs is None
                          for e in epochs)
    assert all(e.run_seconds is not None for e in epochs)


# -- the confidences in log-spaced bins ------------------------------------------------------
def test_log_bins_cover_the_fitted_range_evenly_in_log10():
    torch.manual_seed(0)
    confidences = 10 ** (torch.rand(10_000) * -3.5)  # 0.0003 to 1, evenly in log10
    threshold = float(confidences.quantile(0.3))
    fitted, _ = fitted_histogram(confidences, 20, threshold)
    edges, counts = log_histogram(confidences, 20, fitted[0], fitted[-1])
    assert len(edges) == 21 and len(counts) == 20
    assert edges[0] == pytest.approx(fitted[0], rel=1e-5)
    assert edges[-1] == pytest.approx(fitted[-1], rel=1e-5)
    steps = [math.log10(b / a) for a, b in zip(edges, edges[1:])]
    assert max(steps) == pytest.approx(min(steps), rel=1e-4)
    inside = ((confidences >= edges[0]) & (confidences <= edges[-1])).sum()
    assert sum(counts) == int(inside)
    assert max(counts) < 3 * min(counts)  # even in log10: no bin holds nearly all of them
    assert max(fitted_histogram(confidences, 20, threshold)[1]) > 0.3 * 10_000  # linear do


def test_no_log_bins_for_a_score_that_reaches_zero_or_below():
    scores = torch.linspace(-3.0, -0.1, 500)  # a negative entropy
    assert log_histogram(scores, 10, -3.0, -0.1) == (None, None)
    assert log_histogram(scores.abs() - 0.1, 10, 0.0, 2.9) == (None, None)  # from 0


def test_the_run_emits_log_bins_beside_the_others(two_stages):
    _, events = two_stages
    (th,) = [e for e in events if isinstance(e, ev.ThresholdComputed)]
    assert th.log_edges and len(th.log_edges) == len(th.log_counts) + 1
    assert th.log_edges[0] == pytest.approx(th.zoom_edges[0], rel=1e-5)
    assert th.log_edges[0] <= th.threshold <= th.log_edges[-1]
    assert sum(th.log_counts) == pytest.approx(sum(th.zoom_counts), rel=0.02)


# -- a study's mean curves ---------------------------------------------------------------------
def epoch_event(stage, epoch, val_ppl, tokens, macs, seconds) -> ev.EpochEnded:
    return ev.EpochEnded(stage=stage, epoch=epoch, train_ppl=val_ppl * 0.9, val_ppl=val_ppl,
                         val_acc=0.1, improved=True, patience_counter=0, patience=2,
                         best_epoch=epoch, best_val_ppl=val_ppl, seconds=1.0,
                         training_macs=macs, tokens_trained=tokens, run_training_macs=macs,
                         run_seconds=seconds)


# per configuration, per seed: (stage, epoch, val PPL, tokens so far, MACs so far, seconds)
CURVES = {
    "small": [[(1, 1, 400.0, 1000, 1e9, 10.0), (1, 2, 300.0, 2000, 2e9, 20.0),
               (2, 1, 250.0, 2500, 3e9, 30.0)],
              [(1, 1, 420.0, 1000, 1e9, 12.0), (1, 2, 310.0, 2000, 2e9, 22.0),
               (2, 1, 270.0, 2600, 3.2e9, 34.0)]],
    "large": [[(1, 1, 380.0, 1000, 4e9, 15.0), (1, 2, 260.0, 2000, 8e9, 30.0)],
              [(1, 1, 360.0, 1000, 4e9, 16.0), (1, 2, 280.0, 2000, 8e9, 31.0),
               (1, 3, 275.0, 3000, 12e9, 47.0)]],
}


def write_curve_study(root, curves=CURVES, finished=True):
    """A study directory of len(curves) configurations x 2 seeds whose run directories hold
    the EpochEnded events of `curves` (and a cancelled attempt's redone epoch, in one)."""
    base = Settings()
    configs = tuple(Configuration(name, f"{name}.toml", base.replace(
        run=dataclasses.replace(base.run, name=name))) for name in curves)
    plan = StudyPlan(root, configs, 2)
    root.mkdir(parents=True)
    (root / STUDY_FILE).write_text(json.dumps(plan.to_json()), encoding="utf-8")
    for config in configs:
        for k, seed in enumerate(config.seeds(2)):
            run = seed_dir(root, config.name, seed) / f"20261201T12000{k}Z-{config.name}"
            run.mkdir(parents=True)
            events = [epoch_event(*row) for row in curves[config.name][k]]
            if k == 1:  # an epoch redone after a resume: the later one counts
                events.insert(1, epoch_event(1, 2, 999.0, 2000, 2e9, 21.0))
            with open(run / "events.jsonl", "w", encoding="utf-8") as f:
                for e in events:
                    f.write(json.dumps(e.to_dict()) + "\n")
            (run / "settings.json").write_text("{}", encoding="utf-8")
            status = "finished" if finished else "running"
            (run / "summary.json").write_text(json.dumps({"status": status}),
                                              encoding="utf-8")
    return root


def test_a_studys_curves_are_the_mean_over_seeds_with_the_t_interval(tmp_path):
    small, large = study_curves(write_curve_study(tmp_path / "study"))
    assert (small["name"], small["seeds"], large["name"]) == ("small", 2, "large")
    assert [(p["stage"], p["epoch"]) for p in small["points"]] == [(1, 1), (1, 2), (2, 1)]
    first = small["points"][0]
    assert first["val_ppl"] == pytest.approx(410.0)  # 400 and 420
    # sd = 10 · sqrt(2), n = 2: t · sd / sqrt(n) = t · 10
    assert first["interval"]["half_width"] == pytest.approx(T_975_1 * 10, rel=1e-4)
    assert first["interval"]["low"] == pytest.approx(410.0 - first["interval"]["half_width"])
    assert small["points"][1]["val_ppl"] == pytest.approx(305.0)  # not the redone 999
    last = small["points"][2]
    assert last["run_training_macs"] == pytest.approx(3.1e9)
    assert last["tokens_trained"] == pytest.approx(2550)
    assert last["run_seconds"] == pytest.approx(32.0)
    only_one = large["points"][2]  # one seed stopped after two epochs
    assert only_one["seeds"] == 1 and only_one["val_ppl"] == 275.0
    assert only_one["interval"]["half_width"] is None


def test_a_curve_without_the_run_fields_leaves_them_unknown(tmp_path):
    old = epoch_event(1, 1, 400.0, None, None, None)
    curve = curve_of("old", [old])
    assert curve["points"][0]["val_ppl"] == 400.0
    assert all(curve["points"][0][x] is None for x in X_FIELDS)
    assert run_curve(tmp_path) is None  # no events.jsonl


def test_a_resumed_runs_curve_keeps_what_its_last_attempt_kept(two_stages):
    _, events = two_stages
    curve = curve_of("tiny", kept_epochs(events))
    assert [(p["stage"], p["epoch"]) for p in curve["points"]] == \
        [(e.stage, e.epoch) for e in epochs_of(events)]


def test_under_torchrun_the_totals_are_the_whole_worlds(two_stages, tmp_path):
    """Two processes, each training its rows of every batch, report what one process does."""
    from synthetic import synthetic_splits, write_corpus
    from test_engine_scale import only_run_dir, tiny_args, torchrun

    _, single = two_stages
    data = write_corpus(tmp_path / "data", synthetic_splits())
    two = torchrun(tmp_path, *tiny_args(data, tmp_path / "two"))
    _, err = two.communicate(timeout=180)
    assert two.returncode == 0, err[-2000:]
    logged = ev.read_events(only_run_dir(tmp_path / "two") / "events.jsonl")
    assert run_fields(logged) == run_fields(single)
