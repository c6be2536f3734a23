"""Machine metrics (machine.py): the sampler's events on a tiny run, the epoch's and stage's
memory peaks in the events and summary.json, the sampler's end before the run's, the setting,
the emitter's lock, and the CUDA figures from torch's allocator counters (faked on a CPU)."""
from __future__ import annotations

import io
import json
import mmap
import threading
import time

import pytest
import torch

from ashem_engine import events as ev
from ashem_engine import machine
from ashem_engine.__main__ import main as engine_main
from ashem_engine.control import RunControl
from ashem_engine.machine import MachineSampler
from ashem_engine.run import run_ashem
from ashem_engine.sinks import Emitter, JsonLinesSink, ProgressPrinter
from ashem_engine.summary import SummaryReducer, base_summary
from engine_support import single_thread  # noqa: F401  (autouse fixture)
from tiny import ONE_EPOCH, tiny_corpus, tiny_settings

SAMPLE_S = "run.machine_sample_s=0.05"
MiB = 2 ** 20


def run(settings, control=None, sink=None):
    events: list = []
    sinks = [events.append] if sink is None else [events.append, sink]
    result = run_ashem(settings, sinks, control, tiny_corpus(settings))
    return result, events


def of(events, kind: str) -> list:
    return [e for e in events if e.kind == kind]


def sampler_threads() -> list:
    return [t for t in threading.enumerate() if t.name == "ashem-machine"]


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    settings = tiny_settings(tmp_path_factory.mktemp("sampled"), *ONE_EPOCH, SAMPLE_S)
    result, events = run(settings)
    assert result.status == "finished", result.error
    return settings, result, events


# -- the samples ------------------------------------------------------------------------------

def test_a_sampled_run_reports_the_process_every_interval(sampled):
    _, _, events = sampled
    samples = of(events, "MachineSampled")
    assert len(samples) >= 3
    assert events.index(samples[0]) > events.index(of(events, "RunStarted")[0])
    for s in samples:
        assert s.rss_bytes > 0 and s.peak_rss_bytes >= s.rss_bytes and s.threads >= 1
        assert s.cpu_percent >= 0 and s.devices == []
        assert s.system_cpu_percent is None or 0 <= s.system_cpu_percent <= 100
        assert 0 < s.system_memory_percent <= 100
    peaks = [s.peak_rss_bytes for s in samples]
    assert peaks == sorted(peaks)  # the process' peak so far never falls
    assert [s.t for s in samples] == sorted(s.t for s in samples)
    assert {s.stage for s in samples} >= {1}  # stage 1 trained while sampled


def test_samples_are_json_lines_in_the_run_directory_and_end_before_the_last_event(sampled):
    _, result, events = sampled
    time.sleep(0.2)  # two more intervals: a sampler left running would have emitted by now
    written = ev.read_events(result.run_dir / "events.jsonl")
    assert [e.to_dict() for e in written] == [e.to_dict() for e in events]
    assert events[-1].kind == "RunFinished"
    assert events[-2].kind == "MachineSampled"  # the last sample, just before the end
    assert not sampler_threads()


def test_epochs_and_stages_report_their_peaks(sampled):
    _, _, events = sampled
    for stage in of(events, "StageEnded"):
        epochs = [e for e in of(events, "EpochEnded") if e.stage == stage.stage]
        assert epochs and all(e.memory["peak_rss_bytes"] > 0 for e in epochs)
        assert set(stage.memory) == {"peak_rss_bytes"}  # no CUDA figures on a CPU run
        assert stage.memory["peak_rss_bytes"] >= max(e.memory["peak_rss_bytes"] for e in epochs)
    last = of(events, "MachineSampled")[-1]
    assert max(e.memory["peak_rss_bytes"] for e in of(events, "StageEnded")) <= \
        last.peak_rss_bytes


def test_summary_json_holds_the_peaks(sampled):
    _, result, events = sampled
    summary = json.loads((result.run_dir / "summary.json").read_text())
    stages = {e.stage: e.memory for e in of(events, "StageEnded")}
    assert {r["stage"]: r["memory"] for r in summary["stages"]} == stages
    assert summary["memory"]["peak_rss_bytes"] == of(events, "MachineSampled")[-1].peak_rss_bytes
    assert of(events, "RunFinished")[0].summary["memory"] == summary["memory"]


def test_sampling_changes_no_figure_of_the_run(sampled, tmp_path):
    settings, _, events = sampled
    quiet = tiny_settings(tmp_path, *ONE_EPOCH)  # the sampler off, as in every tiny run
    result, unsampled = run(quiet)
    assert result.status == "finished"
    assert not of(unsampled, "MachineSampled")
    assert all(e.memory is None for e in of(unsampled, "EpochEnded") + of(unsampled, "StageEnded"))
    assert "memory" not in result.summary

    def comparable(events):
        return [{k: v for k, v in e.to_dict().items()
                 if k not in ev.TIMING_FIELDS | ev.MACHINE_FIELDS | {"run_dir", "checkpoint",
                                                                    "settings", "summary"}}
                for e in events if e.kind not in ev.MACHINE_EVENTS]

    assert comparable(unsampled) == comparable(events)
    assert any("val_ppl" in d for d in comparable(events))


# -- the end of a run ---------------------------------------------------------------------------

def test_a_cancelled_run_stops_the_sampler_before_its_last_event(tmp_path):
    settings = tiny_settings(tmp_path, SAMPLE_S)
    control = RunControl()

    def cancel_after_an_epoch(event):
        if event.kind == "EpochEnded":
            control.cancel()

    result, events = run(settings, control, cancel_after_an_epoch)
    assert result.status == "cancelled"
    assert events[-1].kind == "RunCancelled" and of(events, "MachineSampled")
    time.sleep(0.2)
    assert events[-1].kind == "RunCancelled" and not sampler_threads()


def test_a_run_failing_before_it_starts_leaves_no_sampler(tmp_path):
    settings = tiny_settings(tmp_path, SAMPLE_S, f"data.path={tmp_path / 'missing'}")
    events: list = []
    result = run_ashem(settings, [events.append])  # loads the data itself: none there
    assert result.status == "failed" and result.error.error_kind == "data"
    assert [e.kind for e in events if e.kind != "Log"] == ["RunFailed"]  # before RunStarted
    assert not sampler_threads()


# -- the setting ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["-1", '"often"', "true", "nan"])
def test_a_bad_sample_interval_is_one_line_and_exit_code_2(value, tmp_path, capsys,
                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert engine_main(["run", "--set", f"run.machine_sample_s={value}"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1
    assert err.startswith("ashem-engine: error: run.machine_sample_s = ")
    assert list(tmp_path.iterdir()) == []  # nothing was made


def test_an_interval_of_zero_makes_the_sampler_inert():
    sampler = MachineSampler(0)
    sampler.start(lambda event: pytest.fail("an inert sampler emitted"))
    sampler.annotate(epoch_ended(1))
    sampler.stop()
    assert not sampler.on and not sampler_threads()


# -- peaks from annotation (an emitter with the sampler, no run) ------------------------------------

def epoch_ended(epoch: int, stage: int = 1) -> ev.EpochEnded:
    return ev.EpochEnded(stage=stage, epoch=epoch, train_ppl=9.0, val_ppl=9.0, val_acc=0.1,
                         improved=True, patience_counter=0, patience=1, best_epoch=epoch,
                         best_val_ppl=9.0, seconds=1.0)


def stage_started(stage: int = 1) -> ev.StageStarted:
    return ev.StageStarted(stage=stage, layers=2, trainable_params=1, total_params=1, lr=1e-3,
                           patience=1, max_epochs=3, training_tokens=8, batches=2)


def stage_ended(stage: int = 1) -> ev.StageEnded:
    return ev.StageEnded(stage=stage, epochs=2, best_epoch=1, best_val_ppl=9.0,
                         best_val_acc=0.1, stopped_early=False, seconds=2.0, checkpoint="x")


def held_for_a_while(megabytes: int) -> None:
    """Resident memory that comes and goes (an anonymous map, unmapped on close)."""
    block = mmap.mmap(-1, megabytes * MiB)
    block.write(b"\1" * (megabytes * MiB))  # touched: resident
    time.sleep(0.3)  # the sampler reads it (every 10 ms here)
    block.close()


def test_an_epoch_peak_covers_only_its_epoch_and_the_stage_peak_covers_them_all():
    sampler = MachineSampler(60, peak_every_s=0.01)
    events: list = []
    emit = Emitter(events.append, annotate=sampler.annotate)
    sampler.start(emit)
    try:
        emit(stage_started())
        held_for_a_while(96)
        emit(epoch_ended(1))
        emit(epoch_ended(2))  # nothing big in it
        emit(stage_ended())
    finally:
        sampler.stop()
    first, second, stage = (e.memory["peak_rss_bytes"] for e in events[1:])
    assert first - second >= 64 * MiB
    assert stage >= first
    assert not of(events, "MachineSampled")  # samples wait for RunStarted


def test_memory_given_by_the_emitting_code_is_kept():
    sampler = MachineSampler(60)
    sampler.start(lambda event: None)
    try:
        given = epoch_ended(1)
        given.memory = {"peak_rss_bytes": 1}
        sampler.annotate(given)
    finally:
        sampler.stop()
    assert given.memory == {"peak_rss_bytes": 1}


class FakeCuda:
    """torch.cuda's allocator counters for device 0, set by a test."""

    def __init__(self):
        self.allocated = self.reserved = self.peak = self.peak_reserved = 0

    def use(self, allocated: int, reserved: int) -> None:
        self.allocated, self.reserved = allocated, reserved
        self.peak, self.peak_reserved = max(self.peak, allocated), max(self.peak_reserved,
                                                                       reserved)

    def reset_peak_memory_stats(self, device):
        self.peak, self.peak_reserved = self.allocated, self.reserved

    def install(self, monkeypatch) -> None:
        for name, read in (("memory_allocated", lambda d: self.allocated),
                           ("memory_reserved", lambda d: self.reserved),
                           ("max_memory_allocated", lambda d: self.peak),
                           ("max_memory_reserved", lambda d: self.peak_reserved),
                           ("reset_peak_memory_stats", self.reset_peak_memory_stats),
                           ("utilization", lambda d: 87), ("power_draw", lambda d: 312_500)):
            monkeypatch.setattr(torch.cuda, name, read)


def started_on(device: str) -> ev.RunStarted:
    return ev.RunStarted(name="x", run_dir="x", device=device, threads=1, settings={},
                         vocab_size=3, train_tokens=1, val_tokens=1, test_tokens=1, stages=[])


def test_on_cuda_the_device_peaks_come_from_the_allocator_per_epoch_and_stage(monkeypatch):
    cuda = FakeCuda()
    cuda.install(monkeypatch)
    sampler = MachineSampler(60)
    events: list = []
    emit = Emitter(events.append, annotate=sampler.annotate)
    sampler.start(emit)
    try:
        emit(started_on("cuda:0"))
        emit(stage_started())
        cuda.use(5_000, 8_000)
        cuda.use(1_000, 8_000)
        emit(epoch_ended(1))
        cuda.use(3_000, 6_000)
        emit(epoch_ended(2))
        emit(stage_ended())
        sample = sampler.sample()
    finally:
        sampler.stop()
    memory = [e.memory for e in events if e.kind in ("EpochEnded", "StageEnded")]
    assert [(m["peak_allocated_bytes"], m["peak_reserved_bytes"]) for m in memory] == \
        [(5_000, 8_000), (3_000, 8_000), (5_000, 8_000)]
    assert sample.devices == [{"index": 0, "allocated_bytes": 3_000, "reserved_bytes": 6_000,
                               "peak_allocated_bytes": 5_000, "peak_reserved_bytes": 8_000,
                               "utilization": 87, "power_w": 312.5}]


def test_without_nvml_the_device_sample_leaves_utilisation_and_power_out(monkeypatch):
    FakeCuda().install(monkeypatch)

    def no_pynvml(device):
        raise ModuleNotFoundError("pynvml does not seem to be installed")

    monkeypatch.setattr(torch.cuda, "utilization", no_pynvml)
    sampler = MachineSampler(60)
    sampler.start(lambda event: None)
    try:
        sampler.announce("cuda:0")
        device = sampler.sample().devices[0]
    finally:
        sampler.stop()
    assert set(device) == {"index", "allocated_bytes", "reserved_bytes", "peak_allocated_bytes",
                           "peak_reserved_bytes"}


def test_the_lifetime_peak_is_in_bytes():
    import resource

    peak = machine.lifetime_peak_rss()
    assert peak >= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    assert peak > 10 * MiB  # a Python with torch loaded


# -- the emitter's lock, the summary, the progress line ---------------------------------------------

def test_events_from_many_threads_reach_each_sink_one_at_a_time(tmp_path):
    inside, overlaps = [0], []

    def slow_sink(event):
        inside[0] += 1
        overlaps.append(inside[0])
        time.sleep(0.0005)  # without the emitter's lock, other threads get in here
        inside[0] -= 1

    path = tmp_path / "events.jsonl"
    log = JsonLinesSink(path)
    emit = Emitter(log, slow_sink)
    big = {"words": ["x" * 50] * 200}  # a line longer than one write of a buffered file

    def emitter(n: int) -> None:
        for i in range(40):
            emit(ev.SettingChanged(key=f"thread.{n}", value={**big, "i": i}))

    threads = [threading.Thread(target=emitter, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()
    assert max(overlaps) == 1 and len(overlaps) == 320
    lines = path.read_text().splitlines()
    events = [json.loads(line) for line in lines]  # every line whole
    assert len(events) == 320
    assert [e["t"] for e in events] == sorted(e["t"] for e in events)  # in stamping order
    for n in range(8):
        assert [e["value"]["i"] for e in events if e["key"] == f"thread.{n}"] == list(range(40))


def test_the_summary_keeps_the_largest_peaks_over_every_attempt():
    reducer = SummaryReducer(base_summary("run", {"stages": [{"layers": 2}]}))
    reducer(ev.MachineSampled(cpu_percent=50.0, rss_bytes=100, peak_rss_bytes=300, threads=3,
                              devices=[{"index": 0, "peak_allocated_bytes": 40,
                                        "peak_reserved_bytes": 60}]))
    ended = stage_ended()
    ended.memory = {"peak_rss_bytes": 200, "peak_allocated_bytes": 50,
                    "peak_reserved_bytes": 55}
    reducer(ended)
    expected = {"peak_rss_bytes": 300, "peak_allocated_bytes": 50, "peak_reserved_bytes": 60}
    assert reducer.summary["memory"] == expected
    assert reducer.summary["stages"][0]["memory"] == ended.memory
    again = started_on("cpu")
    again.resumed, again.resume_point = True, {"stage": 1, "epoch": 2, "stage_done": True}
    reducer(again)  # a resumed attempt: a new process, whose peaks add to these
    reducer(ev.MachineSampled(cpu_percent=50.0, rss_bytes=100, peak_rss_bytes=250, threads=3))
    assert reducer.summary["memory"] == expected


def test_the_progress_line_ends_an_epoch_with_its_peak():
    out = io.StringIO()
    printer = ProgressPrinter(out)
    ended = epoch_ended(1)
    printer(ended)
    ended.memory = {"peak_rss_bytes": 412 * MiB}
    printer(ended)
    ended.memory = {"peak_rss_bytes": 412 * MiB, "peak_allocated_bytes": 1536 * MiB,
                    "peak_reserved_bytes": 2048 * MiB}
    printer(ended)
    first, second, third = out.getvalue().splitlines()
    assert "peak" not in first
    assert second == first + " | peak 412 MiB"
    assert third == first + " | peak 412 MiB, GPU 1,536 MiB"
