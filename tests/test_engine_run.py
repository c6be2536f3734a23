"""Whole tiny runs: the run directory, stage-2 growth on disk, the reported figures against a
recomputation, determinism, silence, pause / cancel mid-run, failures as results."""
from __future__ import annotations

import dataclasses
import json
import math
import threading
import time
from pathlib import Path

import pytest
import torch

from ashem_engine import events as ev
from ashem_engine.cascade import Cascade, evaluate
from ashem_engine.control import RunControl
from ashem_engine.mining import exit_pass
from ashem_engine.model import EarlyExitLM
from ashem_engine.run import run_ashem
from ashem_engine.rundir import load_checkpoint
from engine_support import single_thread  # noqa: F401  (autouse fixture)
from synthetic import synthetic_splits
from tiny import tiny_corpus, tiny_settings

PATHS = {"sweep", "run_dir", "checkpoint", "runs_dir"}


def scrub(value):
    """Drops clock fields, the host's description and load, and paths at every depth
    (summaries and settings nest them)."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()
                if k not in ev.TIMING_FIELDS | ev.MACHINE_FIELDS and k not in PATHS}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def comparable(events) -> list:
    """A run's events as two runs of the same settings report them alike."""
    return [scrub(ev.without_timing(e)) for e in events if e.kind not in ev.MACHINE_EVENTS]


def of(events, cls, **match):
    return [e for e in events if isinstance(e, cls)
            and all(getattr(e, k) == v for k, v in match.items())]


def one(events, cls, **match):
    found = of(events, cls, **match)
    assert len(found) == 1, (cls.__name__, match, len(found))
    return found[0]


def run(settings, control=None, corpus="tiny"):
    events: list[ev.Event] = []
    threads = torch.get_num_threads()
    try:
        result = run_ashem(settings, [events.append], control,
                           tiny_corpus(settings) if corpus == "tiny" else corpus)
    finally:
        torch.set_num_threads(threads)
    return result, events


def model_from(checkpoint, settings) -> EarlyExitLM:
    data = load_checkpoint(checkpoint)
    model = EarlyExitLM(data["vocab_size"], data["layers"], settings.model)
    model.load_state_dict(data["model"])
    return model.eval()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tiny-run")
    settings = tiny_settings(tmp)
    result, events = run(settings)
    assert result.status == "finished", result.error
    return settings, result, events


# -- the run directory ------------------------------------------------------------------------

def test_run_directory_holds_settings_events_checkpoints_summary(tiny_run):
    settings, result, events = tiny_run
    d = result.run_dir
    assert d.parent == Path(settings.run.runs_dir)
    assert d.name.endswith("-tiny")
    names = {p.name for p in d.iterdir()}
    assert {"events.jsonl", "settings.json", "stage-1-best.pt", "stage-2-best.pt",
            "summary.json"} <= names
    assert not [n for n in names if n.startswith(".") or n.endswith(".tmp")]  # no leftovers
    assert json.loads((d / "settings.json").read_text()) == \
        json.loads(json.dumps(settings.to_dict()))
    on_disk = ev.read_events(d / "events.jsonl")
    assert [e.to_dict() for e in on_disk] == [json.loads(json.dumps(e.to_dict()))
                                              for e in events]
    summary = json.loads((d / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    assert summary["status"] == "finished" and len(summary["stages"]) == 2
    final = one(events, ev.Evaluated)
    assert summary["final"]["ppl"] == final.ppl
    assert summary["mining"][0]["count"] == one(events, ev.HardExamplesCollected).count
    finished = events[-1]
    assert isinstance(finished, ev.RunFinished) and finished.run_dir == str(d)


def test_event_order(tiny_run):
    _, _, events = tiny_run
    kinds = [e.kind for e in events if not isinstance(e, (ev.BatchProgress, ev.EpochEnded))]
    assert kinds == ["RunStarted", "Log", "StageStarted", "StageEnded", "ThresholdComputed",
                     "HardExamplesCollected", "StageStarted", "StageEnded", "Evaluated",
                     "SweepComputed", "RunFinished"]
    started = one(events, ev.RunStarted)
    assert started.vocab_size == 176 and started.train_tokens == 56 * 32
    assert started.val_tokens == 14 * 32 and started.threads == 1
    for stage in (1, 2):
        ends = of(events, ev.EpochEnded, stage=stage)
        assert [e.epoch for e in ends] == list(range(1, len(ends) + 1))
        end = one(events, ev.StageEnded, stage=stage)
        assert end.epochs == len(ends)
        assert end.best_val_ppl == min(e.val_ppl for e in ends)
        assert of(events, ev.BatchProgress, stage=stage)
    assert all(e.hard_ppl is not None and e.shallow_ratio is not None
               for e in of(events, ev.EpochEnded, stage=2))


def test_checkpoints_load_safely_with_their_metadata(tiny_run):
    _, result, events = tiny_run
    one_ = load_checkpoint(result.run_dir / "stage-1-best.pt")
    two = load_checkpoint(result.run_dir / "stage-2-best.pt")
    assert (one_["stage"], one_["layers"], one_["exit_layers"], one_["thresholds"]) == \
        (1, 2, [2], [])
    threshold = one(events, ev.ThresholdComputed).threshold
    assert (two["stage"], two["layers"], two["exit_layers"], two["thresholds"]) == \
        (2, 4, [2, 4], [threshold])
    assert one_["best_epoch"] == one(events, ev.StageEnded, stage=1).best_epoch
    assert two["best_epoch"] == one(events, ev.StageEnded, stage=2).best_epoch
    assert one_["vocab_size"] == two["vocab_size"] == 176


# -- stage 2 grows stage 1 --------------------------------------------------------------------

def test_stage2_keeps_stage1_embedding_and_layers_bit_for_bit(tiny_run):
    _, result, _ = tiny_run
    s1 = load_checkpoint(result.run_dir / "stage-1-best.pt")["model"]
    s2 = load_checkpoint(result.run_dir / "stage-2-best.pt")["model"]
    frozen = [k for k in s1 if k.startswith(("embedding.", "layers.0.", "layers.1."))]
    assert len(frozen) == 1 + 2 * 9  # embedding; wq wk wv wo w1 w2 w3 and two norms per block
    for k in frozen:
        assert s1[k].dtype == s2[k].dtype and torch.equal(s1[k], s2[k]), k
    assert not torch.equal(s1["head.weight"], s2["head.weight"])  # the head kept training
    assert {k for k in s2 if k.startswith(("layers.2.", "layers.3."))}
    assert not any(k.startswith("layers.2.") for k in s1)


def test_stage_started_reports_trainable_parameters(tiny_run):
    _, _, events = tiny_run
    per_block = 4 * 16 * 16 + 3 * 16 * 32 + 2 * 16
    first, second = one(events, ev.StageStarted, stage=1), one(events, ev.StageStarted, stage=2)
    assert (first.trainable_params, first.total_params) == (2 * 176 * 16 + 2 * per_block,) * 2
    assert (second.trainable_params, second.total_params) == \
        (176 * 16 + 2 * per_block, 2 * 176 * 16 + 4 * per_block) == (8000, 16000)
    assert (first.context, second.context) == ("sequence", "token")


def test_freeze_head_keeps_the_head_of_stage1(tmp_path):
    settings = tiny_settings(tmp_path, "stages.2.freeze_head=true", "stages.1.max_epochs=1",
                             "stages.2.max_epochs=1")
    result, events = run(settings)
    assert result.status == "finished", result.error
    s1 = load_checkpoint(result.run_dir / "stage-1-best.pt")["model"]
    s2 = load_checkpoint(result.run_dir / "stage-2-best.pt")["model"]
    assert torch.equal(s1["head.weight"], s2["head.weight"])
    assert not torch.equal(s1["layers.0.attn.wq.weight"], s2["layers.2.attn.wq.weight"])
    assert one(events, ev.StageStarted, stage=2).trainable_params == \
        2 * (4 * 16 * 16 + 3 * 16 * 32 + 2 * 16)


# -- the reported figures, recomputed from the checkpoints ------------------------------------

def test_mining_figures_recomputed_from_stage1_checkpoint(tiny_run):
    settings, result, events = tiny_run
    corpus = tiny_corpus(settings)
    model = model_from(result.run_dir / "stage-1-best.pt", settings)
    passed = exit_pass(model, corpus.batches["validation"], Cascade.of([2]))
    conf = passed.stats.confidence
    threshold = torch.quantile(conf, 0.5).item()
    computed = one(events, ev.ThresholdComputed)
    assert computed.threshold == pytest.approx(threshold, abs=1e-7)
    assert computed.tokens == conf.numel() == 448 and computed.exit_layer == 2
    assert sum(computed.histogram_counts) == 448
    assert len(computed.zoom_counts) == len(computed.histogram_counts)
    assert computed.zoom_edges[0] <= computed.threshold <= computed.zoom_edges[-1]
    assert computed.zoom_edges[0] >= conf.min().item() - 1e-6
    hard = one(events, ev.HardExamplesCollected)
    mask = conf < computed.threshold
    assert hard.count == int(mask.sum()) == 224 and hard.total == 448 and hard.ratio == 0.5
    assert hard.mean_confidence == pytest.approx(conf[mask].mean().item(), rel=1e-5)
    assert hard.hard_ppl == pytest.approx(math.exp(passed.stats.nll[mask].double().mean()),
                                          rel=1e-5)
    stage1 = one(events, ev.StageEnded, stage=1)
    assert stage1.best_val_ppl == pytest.approx(math.exp(passed.stats.nll.double().mean()),
                                                rel=1e-5)
    second = one(events, ev.StageStarted, stage=2)
    assert second.training_tokens == hard.count
    assert second.batches == math.ceil(hard.count / settings.data.batch_size)


def test_final_evaluation_is_the_restored_best_stage2_model(tiny_run):
    settings, result, events = tiny_run
    corpus = tiny_corpus(settings)
    model = model_from(result.run_dir / "stage-2-best.pt", settings)
    threshold = one(events, ev.ThresholdComputed).threshold
    again = evaluate(model, corpus.batches["validation"], Cascade.of([2, 4], [threshold]))
    final = one(events, ev.Evaluated)
    assert final.ppl == pytest.approx(again.ppl, rel=1e-6)
    assert final.accuracy == again.accuracy
    assert final.exit_ratios == again.exit_ratios
    assert final.shallow_ratio + final.deep_ratio == pytest.approx(1.0)
    assert final.compute_cost == pytest.approx(again.spec_cost)
    assert final.compute_cost == pytest.approx((2 * final.shallow_ratio + 4 * final.deep_ratio)
                                               / 4)
    assert one(events, ev.StageEnded, stage=2).best_val_ppl == pytest.approx(final.ppl,
                                                                             rel=1e-6)


def test_stage2_hard_ppl_is_the_new_layers_on_the_mined_tokens_alone(tiny_run):
    settings, result, events = tiny_run
    corpus = tiny_corpus(settings)
    stage1 = model_from(result.run_dir / "stage-1-best.pt", settings)
    stage2 = model_from(result.run_dir / "stage-2-best.pt", settings)
    passed = exit_pass(stage1, corpus.batches["validation"], Cascade.of([2]))
    mask = passed.stats.confidence < one(events, ev.ThresholdComputed).threshold
    with torch.no_grad():
        out = stage2.run_layers(passed.hidden[mask][:, None, :], 2, 4)[:, 0, :]
        nll = torch.nn.functional.cross_entropy(stage2.head(out), corpus.batches[
            "validation"].y.reshape(-1)[mask], reduction="none")
    assert one(events, ev.StageEnded, stage=2).best_hard_ppl == \
        pytest.approx(math.exp(nll.double().mean()), rel=1e-5)


def test_sound_protocol_splits(tmp_path):
    settings = tiny_settings(tmp_path, "mining.split=train", "evaluation.split=test",
                             "stages.1.max_epochs=1", "stages.2.max_epochs=1")
    result, events = run(settings)
    assert result.status == "finished", result.error
    assert one(events, ev.ThresholdComputed).split == "train"
    assert one(events, ev.ThresholdComputed).tokens == 56 * 32
    final = one(events, ev.Evaluated)
    assert final.split == "test" and final.tokens == 14 * 32


def test_three_stages(tmp_path):
    settings = tiny_settings(tmp_path, "stages.1.max_epochs=1", "stages.2.max_epochs=1",
                             "stages.3.layers=5", "stages.3.lr=1e-3", "stages.3.max_epochs=1",
                             "stages.3.hard_ratio=0.5", "stages.3.context=token")
    result, events = run(settings)
    assert result.status == "finished", result.error
    final = one(events, ev.Evaluated)
    assert final.exit_layers == [2, 4, 5] and len(final.thresholds) == 2
    assert sum(final.exit_ratios) == pytest.approx(1.0)
    assert [e.exit_layer for e in of(events, ev.ThresholdComputed)] == [2, 4]
    third = one(events, ev.StageStarted, stage=3)
    assert third.trainable_params == 176 * 16 + (4 * 16 * 16 + 3 * 16 * 32 + 2 * 16)
    s2 = load_checkpoint(result.run_dir / "stage-2-best.pt")["model"]
    s3 = load_checkpoint(result.run_dir / "stage-3-best.pt")["model"]
    for k in s2:
        if not k.startswith("head."):
            assert torch.equal(s2[k], s3[k]), k
    # the second threshold is the quantile over the tokens that exit 1 does not let go
    model = model_from(result.run_dir / "stage-2-best.pt", settings)
    validation = tiny_corpus(settings).batches["validation"]
    first_threshold = one(events, ev.ThresholdComputed, stage=1).threshold
    stays = exit_pass(model, validation, Cascade.of([2])).stats.confidence < first_threshold
    deep = exit_pass(model, validation, Cascade.of([4])).stats.confidence[stays]
    second = one(events, ev.ThresholdComputed, stage=2)
    assert second.tokens == int(stays.sum()) < 448
    assert second.threshold == pytest.approx(torch.quantile(deep, 0.5).item(), abs=1e-7)
    assert one(events, ev.HardExamplesCollected, stage=2).count == \
        int((deep < second.threshold).sum())


# -- determinism and silence ------------------------------------------------------------------

def test_same_settings_same_events(tiny_run, tmp_path):
    settings, _, first = tiny_run
    again = settings.replace(run=dataclasses.replace(settings.run, runs_dir=str(tmp_path / "b")))
    result, second = run(again)
    assert result.status == "finished"
    assert comparable(first) == comparable(second)
    # the comparison is not vacuous: losses, PPLs and thresholds are in it
    assert any("val_ppl" in scrub(ev.without_timing(e)) for e in first)


def test_a_different_seed_gives_different_numbers(tiny_run, tmp_path):
    settings, _, first = tiny_run
    other = settings.replace(run=dataclasses.replace(settings.run, seed=7,
                                                     runs_dir=str(tmp_path / "c")),
                             stages=tuple(dataclasses.replace(s, max_epochs=1)
                                          for s in settings.stages))
    _, second = run(other)
    assert of(first, ev.EpochEnded)[0].val_ppl != of(second, ev.EpochEnded)[0].val_ppl


def test_the_engine_never_prints(tmp_path, capfd):
    settings = tiny_settings(tmp_path, "stages.1.max_epochs=1", "stages.2.max_epochs=1")
    result, events = run(settings, corpus=None)  # through the local files and `datasets`
    assert result.status == "finished", result.error
    failed, _ = run(tiny_settings(tmp_path, f"data.path={tmp_path / 'missing'}"), corpus=None)
    assert failed.status == "failed"
    out, err = capfd.readouterr()
    assert out == "" and err == ""


# -- pause and cancel mid-run -----------------------------------------------------------------

class Background:
    def __init__(self, settings, control, on_event=None):
        self.events: list[ev.Event] = []
        self.paused = threading.Event()
        self.result = None
        self.on_event = on_event

        def sink(e):
            self.events.append(e)
            if self.on_event:
                self.on_event(e)
            if isinstance(e, ev.Paused):
                self.paused.set()

        def target():
            threads = torch.get_num_threads()
            try:
                self.result = run_ashem(settings, [sink], control, tiny_corpus(settings))
            finally:
                torch.set_num_threads(threads)

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def join(self, timeout=60):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "run did not end"
        return self.result


@pytest.mark.parametrize("boundary, before, after", [
    ("stage-1", "StageEnded", "ThresholdComputed"),
    ("mining-1", "HardExamplesCollected", "StageStarted"),
    ("evaluation", "SweepComputed", "RunFinished"),
])
def test_pause_at_boundary_holds_until_resume(tmp_path, boundary, before, after):
    settings = tiny_settings(tmp_path, "stages.1.max_epochs=1", "stages.2.max_epochs=1")
    control = RunControl(pause_at=[boundary])
    bg = Background(settings, control)
    assert bg.paused.wait(60), "no Paused event"
    paused = one(bg.events, ev.Paused)
    assert (paused.boundary, paused.reason) == (boundary, "pause_at")
    assert bg.events[-2].kind == before
    if boundary == "stage-1":
        assert paused.where == "after stage 1"
        assert not of(bg.events, ev.StageStarted, stage=2)
        assert not of(bg.events, ev.ThresholdComputed)
    held = len(bg.events)
    time.sleep(0.3)
    assert len(bg.events) == held and bg.thread.is_alive() and control.paused
    control.resume()
    result = bg.join()
    assert result.status == "finished"
    kinds = [e.kind for e in bg.events[held - 1:] if e.kind != "BatchProgress"]
    assert kinds[:3] == ["Paused", "Resumed", after]
    assert kinds[-1] == "RunFinished"


def test_user_pause_mid_epoch(tmp_path):
    settings = tiny_settings(tmp_path, "stages.1.max_epochs=1", "stages.2.max_epochs=1",
                             "run.progress_events_per_epoch=56")
    control = RunControl()
    bg = Background(settings, control,
                    on_event=lambda e: control.pause() if isinstance(e, ev.BatchProgress)
                    and e.batch == 10 and e.stage == 1 else None)
    assert bg.paused.wait(60)
    paused = one(bg.events, ev.Paused)
    assert (paused.reason, paused.boundary, paused.where) == \
        ("user", None, "stage 1, epoch 1, batch 11/56")
    last = bg.events[-2]
    assert isinstance(last, ev.BatchProgress) and last.batch == 10
    control.resume()
    assert bg.join().status == "finished"
    resumed = one(bg.events, ev.Resumed)
    assert resumed.where == paused.where


def test_cancel_while_held_after_stage1(tmp_path):
    settings = tiny_settings(tmp_path, "stages.1.max_epochs=1", "stages.2.max_epochs=1")
    control = RunControl(pause_at=["stage-1"])
    bg = Background(settings, control)
    assert bg.paused.wait(60)
    cancelled_at = time.monotonic()
    control.cancel()
    result = bg.join(10)
    assert time.monotonic() - cancelled_at < 1.0
    assert result.status == "cancelled"
    last = bg.events[-1]
    assert isinstance(last, ev.RunCancelled) and last.where == "after stage 1"
    d = result.run_dir
    assert (d / "stage-1-best.pt").is_file() and not (d / "stage-2-best.pt").exists()
    assert load_checkpoint(d / "stage-1-best.pt")["stage"] == 1
    summary = json.loads((d / "summary.json").read_text())
    assert summary["status"] == "cancelled" and len(summary["stages"]) == 1
    assert summary["final"] is None
    assert ev.read_events(d / "events.jsonl")[-1].kind == "RunCancelled"


def test_cancel_during_stage2_training(tmp_path):
    settings = tiny_settings(tmp_path, "stages.1.max_epochs=1", "stages.2.max_epochs=2")
    control = RunControl()
    result, events = None, []

    def sink(e):
        events.append(e)
        if isinstance(e, ev.BatchProgress) and e.stage == 2:
            control.cancel()

    threads = torch.get_num_threads()
    try:
        result = run_ashem(settings, [sink], control, tiny_corpus(settings))
    finally:
        torch.set_num_threads(threads)
    assert result.status == "cancelled"
    assert events[-1].kind == "RunCancelled" and events[-1].where.startswith("stage 2, epoch 1")
    assert (result.run_dir / "stage-1-best.pt").is_file()
    assert not of(events, ev.Evaluated)


# -- failures come back as results, never as exceptions ---------------------------------------

def test_missing_data_is_a_failed_result(tmp_path):
    settings = tiny_settings(tmp_path, f"data.path={tmp_path / 'nowhere'}")
    result, events = run(settings, corpus=None)
    assert result.status == "failed"
    assert result.error.error_kind == "data" and "data.path" in result.error.message
    assert events[-1] == result.error
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"]["kind"] == "data"


def test_unwritable_runs_dir_is_a_failed_result(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    settings = tiny_settings(tmp_path, f"run.runs_dir={blocker}")
    result, events = run(settings)
    assert result.status == "failed" and result.run_dir is None
    assert result.error.error_kind == "run_dir" and events == [result.error]


def test_unusable_evaluation_split_fails_before_training(tmp_path):
    settings = tiny_settings(tmp_path, "evaluation.split=test", "stages.1.max_epochs=1",
                             "stages.2.max_epochs=1")
    rows = synthetic_splits()
    rows["test"] = [" the cat sees a dog "]
    from ashem_engine.data import corpus_from_rows
    corpus = corpus_from_rows(rows, settings.data, "synthetic")
    result, events = run(settings, corpus=corpus)
    assert result.status == "failed"
    assert result.error.error_kind == "data" and "test" in result.error.message
    assert not of(events, ev.StageStarted)
