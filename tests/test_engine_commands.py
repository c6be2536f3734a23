"""Control through the run directory: the command file (command_file.py), RunControl.poll,
and steering the mining transition (a new hard ratio while held at mining-N)."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from ashem_engine import events as ev
from ashem_engine.command_file import Command, CommandFile, Rejected, parse_command, write_command
from ashem_engine.control import Cancelled, CommandRefused, RunControl
from ashem_engine.run import resume_ashem, run_ashem
from ashem_engine.rundir import COMMAND_FILE
from ashem_engine.summary import rebuild
from engine_support import single_thread  # noqa: F401  (autouse fixture)
from tiny import ONE_EPOCH, sets, tiny_corpus, tiny_overrides, tiny_settings


def listening(control: RunControl, run_dir: Path) -> list:
    """The control reads run_dir's command file; what it reports is returned (a list)."""
    out: list = []
    control.commands = CommandFile(run_dir / COMMAND_FILE)
    control.on_command = out.append
    control.on_pause = lambda where, reason, boundary: out.append(ev.Paused(where, reason,
                                                                            boundary))
    control.on_resume = lambda where: out.append(ev.Resumed(where))
    return out


def kinds(events) -> list[str]:
    return [e.kind for e in events]


# -- the file ---------------------------------------------------------------------------------

def test_write_command_is_atomic_and_numbers_commands(tmp_path):
    assert write_command(tmp_path, "pause", writer="a") == 1
    assert write_command(tmp_path, "set_hard_ratio", 0.3, writer="b") == 2
    data = json.loads((tmp_path / COMMAND_FILE).read_text())
    assert data == {"seq": 2, "command": "set_hard_ratio", "value": 0.3, "writer": "b"}
    assert [p.name for p in tmp_path.iterdir()] == [COMMAND_FILE]  # no temporary left
    with pytest.raises(ValueError):
        write_command(tmp_path, "explode")


@pytest.mark.parametrize("text, reason", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "does not hold a JSON object"),
    ('{"seq": "1", "command": "pause"}', "seq '1' is not a positive integer"),
    ('{"seq": 0, "command": "pause"}', "seq 0 is not a positive integer"),
    ('{"seq": 1, "command": "explode"}', "unknown command 'explode'"),
    ('{"seq": 1, "command": "set_hard_ratio", "value": "0.3"}', "needs a number"),
    ('{"seq": 1, "command": "set_hard_ratio"}', "needs a number"),
])
def test_malformed_command_files_are_rejected_with_a_reason(text, reason):
    read = parse_command(text)
    assert isinstance(read, Rejected) and reason in read.reason


def test_each_command_is_read_once_and_stale_ones_are_rejected(tmp_path):
    commands = CommandFile(tmp_path / COMMAND_FILE)
    assert commands.read() == []  # no file: nothing, quietly
    write_command(tmp_path, "pause", writer="w")
    assert commands.read() == [Command("pause", 1, None, "w")]
    assert commands.read() == []  # unchanged: one stat, nothing again
    (tmp_path / COMMAND_FILE).write_text('{"seq": 1, "command": "resume"}')  # an old seq
    (stale,) = commands.read()
    assert isinstance(stale, Rejected) and "stale" in stale.reason and stale.seq == 1
    (tmp_path / COMMAND_FILE).write_text("{torn")
    (bad,) = commands.read()
    assert isinstance(bad, Rejected) and "not valid JSON" in bad.reason
    assert commands.read() == []  # reported once per version of the file
    write_command(tmp_path, "resume", writer="w")  # seq 1 again after the torn file: stale
    write_command(tmp_path, "resume", writer="w")
    assert commands.read() == [Command("resume", 2, None, "w")]


def test_a_command_left_from_an_earlier_attempt_is_not_obeyed(tmp_path):
    write_command(tmp_path, "abort", writer="w")
    commands = CommandFile(tmp_path / COMMAND_FILE)  # a resumed run starts
    (left,) = commands.read()
    assert isinstance(left, Rejected) and "before this attempt started" in left.reason
    write_command(tmp_path, "pause", writer="w")
    assert commands.read() == [Command("pause", 2, None, "w")]


# -- RunControl -------------------------------------------------------------------------------

def in_thread(fn, *args):
    box: dict = {}

    def run():
        try:
            fn(*args)
            box["outcome"] = "returned"
        except Cancelled as c:
            box["outcome"] = c
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def wait_until(condition, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_pause_resume_and_abort_through_the_file_are_obeyed_and_reported(tmp_path):
    control = RunControl()
    out = listening(control, tmp_path)
    control.checkpoint("batch 1")
    assert out == []  # no file: nothing happens, nothing is reported
    write_command(tmp_path, "pause", writer="dash-1")
    thread, box = in_thread(control.checkpoint, "batch 2")
    wait_until(lambda: "Paused" in kinds(out))
    assert thread.is_alive()
    obeyed = out[0]
    assert (obeyed.kind, obeyed.command, obeyed.seq, obeyed.writer, obeyed.where) == \
        ("CommandObeyed", "pause", 1, "dash-1", "batch 2")
    assert out[1] == ev.Paused("batch 2", "user", None)
    write_command(tmp_path, "resume", writer="dash-2")  # another dashboard watching
    thread.join(2)
    assert box["outcome"] == "returned"
    assert kinds(out) == ["CommandObeyed", "Paused", "CommandObeyed", "Resumed"]
    assert (out[2].seq, out[2].writer) == (2, "dash-2")
    write_command(tmp_path, "abort")
    with pytest.raises(Cancelled):
        control.checkpoint("batch 3")
    assert out[-1].command == "abort"


def test_commands_that_do_not_apply_are_ignored_with_a_warning(tmp_path):
    control = RunControl()
    out = listening(control, tmp_path)
    for command, value in (("resume", None), ("continue", None), ("set_hard_ratio", 0.3)):
        write_command(tmp_path, command, value)
        control.checkpoint("batch 1")
    assert kinds(out) == ["CommandIgnored"] * 3
    assert [e.reason for e in out] == ["the run is not paused", "the run is not paused",
                                       "the run is not held at a mining transition"]
    assert not control.paused and not control.cancelled


def test_a_held_boundary_waits_for_continue_from_the_file(tmp_path):
    control = RunControl(pause_at=["mining-1"])
    out = listening(control, tmp_path)
    thread, box = in_thread(control.boundary, "mining-1", "after mining")
    wait_until(lambda: "Paused" in kinds(out))
    time.sleep(0.3)
    assert thread.is_alive()  # held, polling
    write_command(tmp_path, "continue")
    thread.join(2)
    assert box["outcome"] == "returned"
    assert kinds(out) == ["Paused", "CommandObeyed", "Resumed"]
    assert out[0].boundary == "mining-1" and out[1].command == "continue"


def test_steering_checks_the_ratio_and_what_the_pipeline_refuses():
    control = RunControl(pause_at=["mining-1"])
    out: list = []
    control.on_command = out.append
    applied = []

    def steering(ratio):
        if ratio < 0.01:
            raise CommandRefused(f"a hard ratio of {ratio:g} selects no token")
        return lambda: applied.append(ratio)

    control.steering = steering
    for ratio in (1.0, 0.0, 0.001, 0.3):
        control.set_hard_ratio(ratio)
    control.checkpoint("held")
    assert [e.kind for e in out] == ["CommandIgnored"] * 3 + ["CommandObeyed"]
    assert "must be in (0, 1), not 1" in out[0].reason
    assert "selects no token" in out[2].reason
    assert applied == [0.3] and out[3].value == 0.3 and out[3].seq is None


# -- steering a real run ----------------------------------------------------------------------

def steered_run(settings, control: RunControl, ratio: float, then):
    """Holds at mining-1, asks for `ratio` (and a bad value first), then `then()`."""
    events: list = []

    def sink(e):
        events.append(e)
        if isinstance(e, ev.Paused) and e.boundary == "mining-1":
            control.set_hard_ratio(1.5)
            control.set_hard_ratio(ratio)
        if isinstance(e, ev.SettingChanged):
            then()

    return run_ashem(settings, [sink], control, tiny_corpus(settings)), events


def mining(events, stage=1):
    th = [e for e in events if isinstance(e, ev.ThresholdComputed) and e.stage == stage][-1]
    hard = [e for e in events if isinstance(e, ev.HardExamplesCollected) and e.stage == stage]
    return ev.without_timing(th), ev.without_timing(hard[-1])


@pytest.fixture(scope="module")
def at_03(tmp_path_factory):
    """A run started with stages.2.hard_ratio=0.3: what steering to 0.3 must reproduce."""
    settings = tiny_settings(tmp_path_factory.mktemp("at03"), "stages.2.hard_ratio=0.3")
    events: list = []
    result = run_ashem(settings, [events.append], None, tiny_corpus(settings))
    assert result.status == "finished"
    return result, events


def test_steering_recomputes_mining_and_trains_like_a_run_with_that_ratio(tmp_path, at_03):
    settings = tiny_settings(tmp_path, 'run.pause_at=["mining-1"]')
    control = RunControl(pause_at=settings.run.pause_at)
    result, events = steered_run(settings, control, 0.3, control.resume)
    assert result.status == "finished", result.error
    held = kinds(events).index("Paused")
    assert kinds(events)[held:held + 7] == [
        "Paused", "CommandIgnored", "CommandObeyed", "ThresholdComputed",
        "HardExamplesCollected", "SettingChanged", "Resumed"]
    fresh, fresh_events = at_03
    th, hard = mining(events)
    fresh_th, fresh_hard = mining(fresh_events)
    assert th.pop("steered") and not fresh_th.pop("steered")
    assert (th, hard) == (fresh_th, fresh_hard)  # the same figures as mining at 0.3
    stage2 = next(e for e in events if isinstance(e, ev.StageStarted) and e.stage == 2)
    assert stage2.training_tokens == hard["count"]
    assert result.summary["final"] == fresh.summary["final"]
    assert result.summary["stages"][1]["best_val_ppl"] == \
        fresh.summary["stages"][1]["best_val_ppl"]
    saved = json.loads((result.run_dir / "settings.json").read_text())
    assert saved["stages"][1]["hard_ratio"] == 0.3
    assert result.summary["settings"]["stages"][1]["hard_ratio"] == 0.3
    assert rebuild(result.run_dir) == json.loads((result.run_dir / "summary.json").read_text())


def test_a_run_killed_after_a_steered_transition_resumes_to_the_same_numbers(tmp_path, at_03):
    settings = tiny_settings(tmp_path, 'run.pause_at=["mining-1"]')
    control = RunControl(pause_at=settings.run.pause_at)
    first, _ = steered_run(settings, control, 0.3, control.cancel)
    assert first.status == "cancelled"
    events: list = []
    second = resume_ashem(first.run_dir, [events.append], corpus=tiny_corpus(settings))
    assert second.status == "finished", second.error
    fresh, _ = at_03
    assert second.summary["final"] == fresh.summary["final"]
    assert second.summary["mining"] == fresh.summary["mining"]
    assert events[0].settings["stages"][1]["hard_ratio"] == 0.3


# -- the headless command line ----------------------------------------------------------------

def test_headless_runs_hold_only_with_hold(tmp_path, capsys, monkeypatch):
    """Without --hold, run.pause_at is not held at (the run finishes by itself); with it
    the run holds where its settings say, a resumed run where its run directory's say (here
    each is cancelled at its first hold point)."""
    from ashem_engine.__main__ import main

    seen = []

    class CancelledAtTheFirstHoldPoint(RunControl):
        def boundary(self, name, where):
            seen.append((name, sorted(self.pause_at), self.hold_at_boundaries))
            self.cancel()
            super().boundary(name, where)

    overrides = sets(*tiny_overrides(tmp_path, 'run.pause_at=["stage-1", "mining-1"]',
                                     *ONE_EPOCH, "evaluation.sweep_points=0"))
    assert main(["run", "--quiet", *overrides]) == 0
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert "Paused" not in kinds(ev.read_events(run_dir / "events.jsonl"))
    monkeypatch.setattr("ashem_engine.__main__.RunControl", CancelledAtTheFirstHoldPoint)
    assert main(["run", "--quiet", "--hold", *overrides]) == 130
    (held,) = set((tmp_path / "runs").iterdir()) - {run_dir}
    assert main(["resume", "--quiet", "--hold", str(held)]) == 130
    assert seen == [("stage-1", ["mining-1", "stage-1"], True),
                    ("mining-1", ["mining-1", "stage-1"], True)]  # the run's own settings
