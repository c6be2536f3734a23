"""Control through the run directory: the command log (command_file.py), the legacy command
file, RunControl.poll, and steering the mining transition (a new hard ratio while held at
mining-N)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ashem_engine import events as ev
from ashem_engine.command_file import (Command, CommandFile, CommandLog, Rejected, RunCommands,
                                       parse_command, parse_entry, write_command)
from ashem_engine.control import Cancelled, CommandRefused, RunControl
from ashem_engine.run import resume_ashem, run_ashem
from ashem_engine.rundir import COMMAND_FILE, COMMAND_LOG, EVENTS_FILE, atomic_write_json
from ashem_engine.summary import rebuild
from engine_support import single_thread  # noqa: F401  (autouse fixture)
from tiny import ONE_EPOCH, sets, tiny_corpus, tiny_overrides, tiny_settings

REPO = Path(__file__).resolve().parents[1]


def listening(control: RunControl, run_dir: Path) -> list:
    """The control reads run_dir's commands (as a run does); what it reports is returned."""
    out: list = []
    control.commands = RunCommands(run_dir)
    control.on_command = out.append
    control.on_pause = lambda where, reason, boundary: out.append(ev.Paused(where, reason,
                                                                            boundary))
    control.on_resume = lambda where: out.append(ev.Resumed(where))
    return out


def kinds(events) -> list[str]:
    return [e.kind for e in events]


def log_lines(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / COMMAND_LOG).read_text().splitlines()]


def append(run_dir: Path, text: str) -> None:
    with open(run_dir / COMMAND_LOG, "a", encoding="utf-8") as f:
        f.write(text)


def commands(items) -> list[tuple]:
    """(command, seq, writer) of the Commands; Rejected as ("rejected", seq, reason)."""
    return [("rejected", i.seq, i.reason) if isinstance(i, Rejected) else
            (i.command, i.seq, i.writer) for i in items]


# -- the command log --------------------------------------------------------------------------

def test_write_command_appends_one_line_per_command_with_a_unique_id(tmp_path):
    first = write_command(tmp_path, "pause", writer="a")
    second = write_command(tmp_path, "set_hard_ratio", 0.3, writer="a")
    third = write_command(tmp_path, "pause")
    assert len({first, second, third}) == 3
    assert first == f"a/{os.getpid()}/1" and second == f"a/{os.getpid()}/2"
    lines = log_lines(tmp_path)
    assert [line["id"] for line in lines] == [first, second, third]
    assert {k: v for k, v in lines[1].items() if k != "time"} == \
        {"id": second, "command": "set_hard_ratio", "value": 0.3, "writer": "a"}
    assert abs(lines[1]["time"] - time.time()) < 60
    assert lines[2]["writer"].startswith(f"ashem {os.getpid()}@")
    assert [p.name for p in tmp_path.iterdir()] == [COMMAND_LOG]  # nothing else written
    with pytest.raises(ValueError):
        write_command(tmp_path, "explode")
    assert len(log_lines(tmp_path)) == 3


@pytest.mark.parametrize("line, reason", [
    (b"{not json", "command #4 in commands.jsonl is not valid JSON"),
    (b"\xff\xfe", "command #4 in commands.jsonl is not valid JSON"),
    (b"[1, 2]", "does not hold a JSON object"),
    (b'{"id": 3, "command": "pause"}', "id 3 is not a string"),
    (b'{"id": "x", "command": "explode"}', "unknown command 'explode'"),
    (b'{"command": "set_hard_ratio", "value": "0.3"}', "needs a number"),
    (b'{"command": "set_hard_ratio"}', "needs a number"),
])
def test_malformed_lines_are_rejected_with_a_reason(line, reason):
    read = parse_entry(line, 4)
    assert isinstance(read, Rejected) and reason in read.reason and read.seq == 4
    assert "\n" not in read.reason


def test_a_line_without_an_id_is_a_command(tmp_path):
    assert parse_entry(b'{"command": "continue"}', 2) == Command("continue", 2)


def test_each_line_is_read_once_in_order_and_a_malformed_one_makes_nothing_stale(tmp_path):
    log = CommandLog(tmp_path / COMMAND_LOG)
    assert log.read() == []  # no log: nothing, quietly
    pause = write_command(tmp_path, "pause", writer="w")
    assert log.read() == [Command("pause", 1, None, "w", pause)]
    assert log.read() == []  # unchanged: nothing again
    append(tmp_path, "{torn\n\n")  # a malformed line, and a blank one (skipped)
    write_command(tmp_path, "continue", writer="w")
    write_command(tmp_path, "continue", writer="w")
    read = log.read()
    assert commands(read[1:]) == [("continue", 3, "w"), ("continue", 4, "w")]
    assert isinstance(read[0], Rejected) and read[0].seq == 2 and "not valid JSON" in \
        read[0].reason
    assert log.read() == []


def test_a_torn_last_line_is_left_for_the_next_read(tmp_path):
    log = CommandLog(tmp_path / COMMAND_LOG)
    append(tmp_path, '{"id": "t", "command": "ab')
    assert log.read() == []
    assert log.read() == []
    append(tmp_path, 'ort", "writer": "w"}\n')
    assert log.read() == [Command("abort", 1, None, "w", "t")]


def test_a_removed_or_cut_short_log_is_reported_once_and_read_again_from_its_start(tmp_path):
    log = CommandLog(tmp_path / COMMAND_LOG)
    write_command(tmp_path, "pause", writer="w")
    write_command(tmp_path, "resume", writer="w")
    assert len(log.read()) == 2
    (tmp_path / COMMAND_LOG).unlink()
    (gone,) = log.read()
    assert isinstance(gone, Rejected) and "removed under the run" in gone.reason
    assert log.read() == []  # once
    write_command(tmp_path, "continue", writer="w")
    assert commands(log.read()) == [("continue", 3, "w")]  # numbered on: seq stays unique
    # cut short in place (the same file), then longer than what was read: told by its start
    with open(tmp_path / COMMAND_LOG, "r+b") as f:
        f.truncate(0)
    for command in ("pause", "resume", "abort"):
        write_command(tmp_path, command, writer="another writer")
    (cut, *read) = log.read()
    assert isinstance(cut, Rejected) and "replaced or cut short" in cut.reason
    assert commands(read) == [(c, s, "another writer") for c, s in
                              (("pause", 4), ("resume", 5), ("abort", 6))]
    replacement = tmp_path / "new.jsonl"
    replacement.write_text('{"command": "pause"}\n')
    os.replace(replacement, tmp_path / COMMAND_LOG)  # replaced by another file
    (replaced, *read) = log.read()
    assert "replaced or cut short" in replaced.reason and commands(read) == [("pause", 7, "")]


def test_lines_from_before_this_attempt_are_not_obeyed_nor_reported_twice(tmp_path):
    reported = write_command(tmp_path, "abort", writer="w")  # an earlier attempt obeyed it
    (tmp_path / EVENTS_FILE).write_text(json.dumps(ev.CommandObeyed(
        "abort", "batch 3", 1, writer="w", id=reported).to_dict()) + "\n")
    left = write_command(tmp_path, "pause", writer="w")  # written while no attempt ran
    append(tmp_path, '{"id": "half", "command": "pau')  # torn when the attempt started
    commands_ = RunCommands(tmp_path)  # a resumed run starts
    append(tmp_path, 'se"}\n')
    (before, after) = commands_.read()
    assert isinstance(before, Rejected) and (before.seq, before.command, before.id) == \
        (2, "pause", left)
    assert before.reason == "command #2 (pause) was written before this attempt started"
    assert after == Command("pause", 3, None, "", "half")  # completed after it started
    write_command(tmp_path, "continue", writer="w")
    assert commands(commands_.read()) == [("continue", 4, "w")]


WRITER = """
import sys, time
from pathlib import Path
from ashem_engine.command_file import write_command
run_dir, name, base = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
(run_dir / f"ready-{name}").touch()
while not (run_dir / "go").exists():
    pass
for i in range(200):
    write_command(run_dir, "set_hard_ratio", round(base + i / 1000, 4), writer=name)
"""


def write_in_processes(run_dir: Path, writers: dict) -> list:
    """Two processes that write at once, once `go` is there (each spins till then)."""
    jobs = [subprocess.Popen([sys.executable, "-c", WRITER, str(run_dir), name, str(base)],
                             cwd=REPO) for name, base in writers.items()]
    deadline = time.monotonic() + 60
    while not all((run_dir / f"ready-{name}").exists() for name in writers):
        assert time.monotonic() < deadline and all(job.poll() is None for job in jobs)
        time.sleep(0.01)
    return jobs


def write_in_threads(run_dir: Path, writers: dict) -> list:
    def write(name, base):
        while not (run_dir / "go").exists():
            time.sleep(0.0001)
        for i in range(200):
            write_command(run_dir, "set_hard_ratio", round(base + i / 1000, 4), writer=name)
    threads = [threading.Thread(target=write, args=item) for item in writers.items()]
    for thread in threads:
        thread.start()
    return threads


@pytest.mark.parametrize("start", [write_in_processes, write_in_threads])
def test_two_writers_of_200_commands_each_lose_nothing(tmp_path, start):
    """Two dashboards write while the engine reads: every command is taken once, none lost,
    no seq twice, each writer's commands in the order it wrote them."""
    control, applied = RunControl(), []
    control.steering = lambda ratio: (lambda: applied.append(ratio))
    out = listening(control, tmp_path)
    writers = {"A": 0.1, "B": 0.5}
    jobs = start(tmp_path, writers)
    done = threading.Event()

    def engine():
        while not done.is_set():
            control.checkpoint("batch")
            time.sleep(0.002)
    reader = threading.Thread(target=engine)
    reader.start()
    (tmp_path / "go").touch()
    for job in jobs:
        assert (job.wait(60) if isinstance(job, subprocess.Popen) else job.join(60)) in (0, None)
    done.set()
    reader.join(10)
    control.checkpoint("after")
    assert len(out) == 400 and set(kinds(out)) == {"CommandObeyed"}
    assert [e.seq for e in out] == list(range(1, 401))
    assert len({e.id for e in out}) == 400
    for name, base in writers.items():
        assert [e.value for e in out if e.writer == name] == \
            [round(base + i / 1000, 4) for i in range(200)]
    assert applied == [e.value for e in out]
    assert len(log_lines(tmp_path)) == 400  # every line whole
    assert {p.name for p in tmp_path.iterdir()} - {"go", "ready-A", "ready-B"} == {COMMAND_LOG}


def test_steer_then_continue_within_one_poll_are_both_obeyed_in_order(tmp_path):
    control = RunControl(pause_at=["mining-1"])
    out = listening(control, tmp_path)
    applied: list = []
    control.steering = lambda ratio: (lambda: applied.append(ratio))

    def dashboard(*held):  # both written before the held control reads the log again
        write_command(tmp_path, "set_hard_ratio", 0.3, writer="dash")
        write_command(tmp_path, "continue", writer="dash")
    control.on_pause = dashboard
    control.boundary("mining-1", "after mining")  # returns: continued
    assert applied == [0.3] and not control.paused
    assert [(e.kind, e.command, e.seq) for e in out[:2]] == [
        ("CommandObeyed", "set_hard_ratio", 1), ("CommandObeyed", "continue", 2)]
    assert kinds(out) == ["CommandObeyed", "CommandObeyed", "Resumed"]


# -- the legacy command file (older dashboards) -----------------------------------------------

def write_legacy(run_dir: Path, seq: int, command: str, writer: str = "old") -> None:
    atomic_write_json(run_dir / COMMAND_FILE, {"seq": seq, "command": command, "writer": writer})


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
    assert isinstance(read, Rejected) and reason in read.reason and COMMAND_FILE in read.reason


def test_a_legacy_command_file_is_still_read_each_seq_once(tmp_path):
    commands_ = CommandFile(tmp_path / COMMAND_FILE)
    assert commands_.read() == []
    write_legacy(tmp_path, 1, "pause", "w")
    assert commands_.read() == [Command("pause", 1, None, "w", "control.json#1")]
    assert commands_.read() == []
    (tmp_path / COMMAND_FILE).write_text('{"seq": 1, "command": "resume"}')  # an old seq
    (stale,) = commands_.read()
    assert isinstance(stale, Rejected) and "stale" in stale.reason and stale.seq == 1
    (tmp_path / COMMAND_FILE).write_text("{torn")
    (bad,) = commands_.read()
    assert isinstance(bad, Rejected) and "not valid JSON" in bad.reason
    assert commands_.read() == []  # reported once per version of the file
    write_legacy(tmp_path, 2, "resume", "w")
    assert commands(commands_.read()) == [("resume", 2, "w")]


def test_a_run_reads_a_legacy_command_file_beside_the_log(tmp_path):
    write_legacy(tmp_path, 4, "abort")  # left from an earlier attempt, never reported
    control = RunControl()
    out = listening(control, tmp_path)
    control.checkpoint("batch 1")
    assert [(e.kind, e.seq, e.id) for e in out] == [("CommandIgnored", 4, "control.json#4")]
    assert "written before this attempt started" in out[0].reason
    write_legacy(tmp_path, 5, "pause")
    write_command(tmp_path, "continue", writer="new")
    control.checkpoint("batch 2")  # the file's command first, then the log's
    assert [(e.command, e.seq, e.writer) for e in out[1:]] == \
        [("pause", 5, "old"), ("continue", 1, "new")]
    assert kinds(out) == ["CommandIgnored", "CommandObeyed", "CommandObeyed"]
    assert not control.paused  # paused and continued within one read: it never held
    unaware = RunCommands(tmp_path)  # made before the events were written: all left over
    (tmp_path / EVENTS_FILE).write_text("".join(json.dumps(e.to_dict()) + "\n" for e in out))
    assert RunCommands(tmp_path).read() == []  # a resumed run: reported already, not again
    assert [r.reason for r in unaware.read()] == [
        "command #5 (pause) was written before this attempt started",
        "command #1 (continue) was written before this attempt started"]


def test_attaching_to_an_old_run_directory_with_a_control_file_writes_the_log(tmp_path):
    from ashem_app.sources import RunDirSource

    (tmp_path / EVENTS_FILE).write_text(json.dumps(ev.Resumed("batch 1").to_dict()) + "\n")
    (tmp_path / COMMAND_FILE).write_text("{torn")
    source = RunDirSource(tmp_path)
    assert kinds(source.history()) == ["Resumed"] and source.live
    source.pause()
    source.steer(0.3)
    assert [(line["command"], line.get("value")) for line in log_lines(tmp_path)] == \
        [("pause", None), ("set_hard_ratio", 0.3)]
    assert (tmp_path / COMMAND_FILE).read_text() == "{torn"


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


def test_steer_then_continue_written_within_one_poll_at_a_held_run_are_both_obeyed(
        tmp_path, at_03, monkeypatch):
    """A dashboard steers and continues before the held run reads its log again (one
    slot lost the steer): the run mines at the ratio, then goes on, like a run at 0.3."""
    reads: list = []
    read = RunCommands.read
    monkeypatch.setattr(RunCommands, "read", lambda self: reads.append(read(self)) or reads[-1])
    settings = tiny_settings(tmp_path, 'run.pause_at=["mining-1"]')
    events: list = []

    def dashboard(e):
        events.append(e)
        if isinstance(e, ev.Paused) and e.boundary == "mining-1":
            write_command(events[0].run_dir, "set_hard_ratio", 0.3, writer="dash")
            write_command(events[0].run_dir, "continue", writer="dash")

    result = run_ashem(settings, [dashboard], RunControl(pause_at=settings.run.pause_at),
                       tiny_corpus(settings))
    assert result.status == "finished", result.error
    assert [len(r) for r in reads if r] == [2]  # both in one read
    held = kinds(events).index("Paused")
    assert kinds(events)[held:held + 7] == [
        "Paused", "CommandObeyed", "ThresholdComputed", "HardExamplesCollected",
        "SettingChanged", "CommandObeyed", "Resumed"]
    obeyed = [e for e in events if isinstance(e, ev.CommandObeyed)]
    assert [(e.command, e.seq, e.value, e.writer) for e in obeyed] == [
        ("set_hard_ratio", 1, 0.3, "dash"), ("continue", 2, None, "dash")]
    assert [e.id for e in obeyed] == [line["id"] for line in log_lines(result.run_dir)]
    fresh, fresh_events = at_03
    assert mining(events)[1] == mining(fresh_events)[1]  # the hard tokens of 0.3
    assert result.summary["final"] == fresh.summary["final"]


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
