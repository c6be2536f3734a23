"""RunControl (pause / resume / cancel, boundaries), events and their JSON form, the run
directory and checkpoint safety."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from ashem_engine import events as ev
from ashem_engine import rundir, sinks
from ashem_engine.control import Cancelled, RunControl
from ashem_engine.rundir import CheckpointError, create_run_dir, load_checkpoint


class Worker:
    """Runs one control call in a thread and records how it ended."""

    def __init__(self, fn, *args):
        self.outcome = None
        self.finished_at = None
        self.thread = threading.Thread(target=self._run, args=(fn, *args), daemon=True)
        self.thread.start()

    def _run(self, fn, *args):
        try:
            fn(*args)
            self.outcome = "returned"
        except Cancelled as c:
            self.outcome = c
        self.finished_at = time.monotonic()

    def blocked(self, seconds=0.2) -> bool:
        self.thread.join(seconds)
        return self.thread.is_alive()

    def join(self, seconds=2.0):
        self.thread.join(seconds)
        assert not self.thread.is_alive(), "worker still blocked"
        return self.outcome


def with_callbacks(control: RunControl):
    calls = []
    control.on_pause = lambda where, reason, boundary: calls.append(
        ("pause", where, reason, boundary))
    control.on_resume = lambda where: calls.append(("resume", where))
    return calls


# -- RunControl ------------------------------------------------------------------------------

def test_checkpoint_passes_when_running():
    control = RunControl()
    calls = with_callbacks(control)
    control.checkpoint("batch 1")
    assert calls == [] and not control.paused and not control.cancelled


def test_pause_blocks_checkpoint_until_resume():
    control = RunControl()
    calls = with_callbacks(control)
    control.pause()
    assert control.paused
    worker = Worker(control.checkpoint, "stage 1, epoch 1, batch 3/10")
    assert worker.blocked(0.3)
    assert calls == [("pause", "stage 1, epoch 1, batch 3/10", "user", None)]
    control.resume()
    assert worker.join() == "returned"
    assert calls[-1] == ("resume", "stage 1, epoch 1, batch 3/10")
    assert not control.paused


def test_start_paused():
    control = RunControl(start_paused=True)
    worker = Worker(control.checkpoint, "start")
    assert worker.blocked()
    control.resume()
    assert worker.join() == "returned"


def test_cancel_while_paused_is_quick():
    control = RunControl()
    control.pause()
    worker = Worker(control.checkpoint, "somewhere")
    assert worker.blocked(0.2)
    cancelled_at = time.monotonic()
    control.cancel()
    outcome = worker.join(2.0)
    assert isinstance(outcome, Cancelled) and outcome.where == "somewhere"
    assert worker.finished_at - cancelled_at < 1.0


def test_cancel_raises_at_the_next_checkpoint():
    control = RunControl()
    control.cancel()
    with pytest.raises(Cancelled) as info:
        control.checkpoint("batch 7")
    assert info.value.where == "batch 7" and "batch 7" in str(info.value)
    with pytest.raises(Cancelled):
        control.boundary("stage-1", "after stage 1")


def test_boundary_holds_only_where_asked():
    control = RunControl(pause_at=["stage-1", "mining-1"])
    calls = with_callbacks(control)
    control.boundary("stage-2", "after stage 2")  # not in pause_at: passes
    control.boundary("evaluation", "after the final evaluation")
    assert calls == [] and not control.paused

    worker = Worker(control.boundary, "stage-1", "after stage 1")
    assert worker.blocked(0.3)
    assert control.paused
    assert calls == [("pause", "after stage 1", "pause_at", "stage-1")]
    control.resume()
    assert worker.join() == "returned"
    assert calls[-1] == ("resume", "after stage 1")


def test_boundary_does_not_hold_when_holding_is_off():
    control = RunControl(pause_at=["stage-1"], hold_at_boundaries=False)
    calls = with_callbacks(control)
    worker = Worker(control.boundary, "stage-1", "after stage 1")
    assert worker.join(1.0) == "returned"
    assert calls == []


def test_boundary_still_honours_a_user_pause_and_cancel():
    control = RunControl(pause_at=(), hold_at_boundaries=False)
    control.pause()
    worker = Worker(control.boundary, "stage-1", "after stage 1")
    assert worker.blocked()
    control.cancel()
    assert isinstance(worker.join(), Cancelled)


# -- events -----------------------------------------------------------------------------------

SAMPLES = [
    ev.RunStarted(name="tiny", run_dir="/r", device="cpu", threads=2, settings={"run": {"a": 1}},
                  vocab_size=176, train_tokens=1792, val_tokens=448, test_tokens=448,
                  stages=[{"stage": 1, "layers": 2, "max_epochs": 3}], t=0.5),
    ev.StageStarted(stage=2, layers=4, trainable_params=8000, total_params=16000, lr=1e-4,
                    patience=3, max_epochs=50, training_tokens=224, batches=56,
                    context="token", t=1.0),
    ev.BatchProgress(stage=1, epoch=2, batch=40, batches=160, loss=6.5, tokens_per_s=1234.5,
                     eta_s=12.0, t=2.0),
    ev.EpochEnded(stage=2, epoch=3, train_ppl=100.5, val_ppl=90.25, val_acc=0.15,
                  improved=False, patience_counter=1, patience=3, best_epoch=2,
                  best_val_ppl=89.0, seconds=3.5, hard_ppl=700.0, shallow_ratio=0.7, t=3.0),
    ev.StageEnded(stage=1, epochs=4, best_epoch=3, best_val_ppl=986.4, best_val_acc=0.16,
                  stopped_early=True, seconds=20.0, checkpoint="/r/stage-1-best.pt", t=4.0),
    ev.ThresholdComputed(stage=1, exit_layer=2, threshold=0.1499, target_ratio=0.5,
                         split="validation", tokens=65536, histogram_edges=[0.0, 0.5, 1.0],
                         histogram_counts=[60000, 5536], t=5.0),
    ev.HardExamplesCollected(stage=1, count=32768, total=65536, ratio=0.5, mean_confidence=0.065,
                             hard_ppl=2763.7, split="validation", top_words=[["the", 900]],
                             examples=[{"context": ["a", "b"], "target": "c",
                                        "confidence": 0.01}], t=6.0),
    ev.Evaluated(split="validation", tokens=65536, accuracy=0.1577, ppl=829.78,
                 exit_layers=[2, 4], exit_ratios=[0.704, 0.296], shallow_ratio=0.704,
                 deep_ratio=0.296, compute_cost=0.6482, honest_cost=1.2, thresholds=[0.15],
                 t=7.0),
    ev.SweepComputed(split="validation", tokens=65536, plain_macs_per_token=4.74e6, series=[
        {"name": "ASHEM · max-softmax", "kind": "sweep", "signal": "softmax", "points": [
            {"quantile": 0.5, "thresholds": [0.16], "ppl": 780.0, "accuracy": 0.158,
             "exit_ratios": [0.7, 0.3], "deep_ratio": 0.3, "spec_cost": 0.65,
             "honest_cost": 1.25, "macs_per_token": 5.9e6, "pareto": True}]}], t=7.5),
    ev.Paused(where="after stage 1", reason="pause_at", boundary="stage-1", t=8.0),
    ev.Resumed(where="after stage 1", t=9.0),
    ev.Log(level="warning", message="ünïcode — fine", t=10.0),
    ev.CommandObeyed(command="set_hard_ratio", where="after mining at stage 1's exit", seq=3,
                     value=0.3, writer="ashem 4711@host", t=10.2),
    ev.CommandIgnored(reason="the run is not paused", where="stage 1, epoch 1, batch 2/9",
                      command="resume", seq=4, t=10.4),
    ev.SettingChanged(key="stages.2.hard_ratio", value=0.3, previous=0.5, t=10.6),
    ev.MachineSampled(cpu_percent=182.5, rss_bytes=437_000_000, peak_rss_bytes=443_000_000,
                      threads=3, system_cpu_percent=95.0, system_memory_percent=41.2,
                      devices=[{"index": 0, "allocated_bytes": 1 << 30,
                                "reserved_bytes": 2 << 30, "peak_allocated_bytes": 3 << 30}],
                      stage=2, t=10.8),
    ev.RunFinished(run_dir="/r", seconds=11.0, summary={"final": {"ppl": 829.78}}, t=11.0),
    ev.RunCancelled(run_dir="/r", where="stage 2, epoch 1, batch 3/56", seconds=12.0, t=12.0),
    ev.RunFailed(error_kind="data", message="data.path '/x' is not a directory", where="start",
                 run_dir="/r", t=13.0),
]


def test_samples_cover_every_event_type():
    assert {type(e).__name__ for e in SAMPLES} == set(ev.EVENT_TYPES)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: e.kind)
def test_event_round_trips_through_json(event):
    data = event.to_dict()
    assert data["kind"] == type(event).__name__ == event.kind
    back = ev.event_from_dict(json.loads(json.dumps(data)))
    assert type(back) is type(event)
    assert back == event


def test_event_from_dict_ignores_unknown_keys():
    data = ev.Log(level="info", message="m").to_dict()
    data["added_by_a_newer_writer"] = 1
    assert ev.event_from_dict(data) == ev.Log(level="info", message="m")


def test_without_timing_drops_clock_fields_only():
    e = SAMPLES[2]  # BatchProgress
    assert ev.without_timing(e) == {"kind": "BatchProgress", "stage": 1, "epoch": 2,
                                    "batch": 40, "batches": 160, "loss": 6.5}


def test_emitter_stamps_run_clock_and_fans_out():
    now = [100.0]
    a, b = [], []
    emit = sinks.Emitter(a.append, b.append, clock=lambda: now[0])
    now[0] = 102.5
    emit(ev.Log(level="info", message="x"))
    assert a == b and a[0].t == 2.5
    assert emit.elapsed() == 2.5


def test_json_lines_sink_and_torn_last_line(tmp_path):
    path = tmp_path / "events.jsonl"
    sink = sinks.JsonLinesSink(path)
    for e in SAMPLES[:3]:
        sink(e)
    sink.close()
    assert ev.read_events(path) == SAMPLES[:3]
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"kind": "Log", "t": 1.0, "level": "in')  # killed mid-write
    assert ev.read_events(path) == SAMPLES[:3]


def test_read_events_skips_garbage_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    lines = [json.dumps(SAMPLES[0].to_dict()), "not json", '{"kind": "NoSuchEvent"}', "",
             json.dumps(SAMPLES[1].to_dict())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    assert ev.read_events(path) == SAMPLES[:2]


# -- run directory and checkpoints ----------------------------------------------------------

def test_run_directories_in_the_same_second_are_distinct(tmp_path, monkeypatch):
    monkeypatch.setattr(rundir.time, "strftime", lambda fmt, t=None: "20250101T000000Z")
    first = create_run_dir(tmp_path / "runs", "demo")
    (first / "events.jsonl").write_text("first run\n")
    second = create_run_dir(tmp_path / "runs", "demo")
    third = create_run_dir(tmp_path / "runs", "demo")
    assert len({first, second, third}) == 3
    assert first.name == "20250101T000000Z-demo"
    assert second.name == "20250101T000000Z-demo-2"
    assert (first / "events.jsonl").read_text() == "first run\n"
    assert list(second.iterdir()) == []  # the write probe leaves nothing behind


def test_runs_dir_that_is_a_file(tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("")
    with pytest.raises(rundir.RunDirError) as info:
        create_run_dir(blocker, "x")
    assert "run.runs_dir" in str(info.value) and "\n" not in str(info.value)


def test_atomic_write_json_replaces_whole_file(tmp_path):
    path = tmp_path / "summary.json"
    rundir.atomic_write_json(path, {"a": 1})
    rundir.atomic_write_json(path, {"b": float("nan")})
    assert path.read_text().startswith("{") and json.loads(path.read_text()).keys() == {"b"}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "stage-1-best.pt"
    state = {"w": torch.arange(6.0).reshape(2, 3)}
    rundir.atomic_torch_save(path, {"model": state, "stage": 1, "thresholds": [0.25]})
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["model"]["w"], state["w"])
    assert loaded["stage"] == 1 and loaded["thresholds"] == [0.25]


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "code ran"))


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "extra": Payload(marker)}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert not marker.exists()
    assert "evil.pt" in str(info.value) and "\n" not in str(info.value)


def test_bad_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    truncated = tmp_path / "truncated.pt"
    torch.save({"model": {"w": torch.zeros(100)}}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:50])
    with pytest.raises(CheckpointError):
        load_checkpoint(truncated)
    not_ours = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(1)}, not_ours)
    with pytest.raises(CheckpointError, match="not a readable ashem checkpoint"):
        load_checkpoint(not_ours)
