"""Does the dashboard slow training down, and does it answer keys while training runs?

Runs the same shortened real run headless and inside the app, alternating H A, A H, H A …
(so that machine drift hits both), each run in a fresh process started the way the real
commands start (the app child imports `ashem_app.__main__` first, as `ashem` does, so it
gets the app's process set-up; the headless child imports only the engine, as
`ashem-engine` does):

- headless: `run_ashem(settings)` in the main thread, no UI (what `ashem-engine run` does);
- thread (only with --modes): the same in a plain thread while the main thread idles, no
  UI: separates what running the engine off the main thread costs from what the UI costs;
- app: the real `AshemApp` with the engine in its thread worker, driven through
  `App.run_test` (every frame is composed and rendered as in a terminal, only not written
  out), while another thread presses keys.

The figures, per run:

- batch time: the median time of a stage's training batches (from one batch boundary to
  the next, measured in the child by wrapping `RunControl.checkpoint`, which the engine
  calls on its own thread at the start of every batch; the engine and its events are
  unchanged). A median over hundreds of batches ignores the odd slow batch that other work
  on the machine causes: the least noisy figure, and the one the pass rule uses;
- engine CPU per batch: the engine thread's own CPU time per batch (`time.thread_time` in
  the same hook; torch's worker threads are not in it);
- tokens/s: BatchProgress.tokens_per_s at the end of each epoch (tokens per second of busy
  training time), and the wall clock from RunStarted to the last StageEnded;
- in the app: the UI thread's CPU seconds (what the UI takes from the machine), the events
  applied and the structural redraws, and the latency of key presses made while training
  runs (key → screen: a real key event, "n", posted from another thread, until the action
  has run and the screen has been refreshed; ping: App.call_from_thread round trip).

Reported per mode: mean, stdev and min–max over the repeats; per figure the paired ratios
(each app run against the headless run beside it) as app speed / headless speed: their
mean, a 95 % confidence interval (t) and min–max. Pass: the stage-1 batch-time ratio's mean
>= 0.98, and key p95 <= 100 ms. The interval's half-width says what the run can resolve.

On a quiet machine (about 15 minutes; each run about 35 s, 10 pairs):

    python bench/bench_app.py --repeats 10 --set data.path=../shared/data/wikitext-2-raw \
        --set data.train_samples=1280 --set stages.1.max_epochs=2 --set stages.2.max_epochs=2

`--quick`: one pair, no pass rule (a smoke run).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

from ashem_engine.stats import aggregate

ROOT = Path(__file__).resolve().parents[1]


# -- children --------------------------------------------------------------------------------
def throughput(events: list) -> dict[str, Any]:
    """Figures of one run, from its events."""
    last: dict = {}
    for e in events:
        if e.kind == "BatchProgress":
            last[(e.stage, e.epoch)] = e
    by_stage: dict[int, list[float]] = {}
    for (stage, _), e in sorted(last.items()):
        by_stage.setdefault(stage, []).append(e.tokens_per_s)
    started = next(e.t for e in events if e.kind == "RunStarted")
    ended = max(e.t for e in events if e.kind == "StageEnded")
    return {
        "tokens_per_s": {str(s): statistics.mean(v) for s, v in by_stage.items()},
        "wall_s": ended - started,
        "epochs": sum(1 for e in events if e.kind == "EpochEnded"),
        "status": events[-1].kind,
    }


BATCH_MARKS: list[tuple[str, float, float]] = []  # (where, perf_counter, engine thread CPU)


def install_batch_clock() -> None:
    """Wraps RunControl.checkpoint (called by the engine thread before every training
    batch, with "stage S, epoch E, batch B/N") to time the batches."""
    from ashem_engine.control import RunControl

    original = RunControl.checkpoint

    def checkpoint(self, where: str) -> None:
        BATCH_MARKS.append((where, time.perf_counter(), time.thread_time()))
        original(self, where)

    RunControl.checkpoint = checkpoint


def batch_times(marks: list[tuple[str, float, float]]) -> dict[str, Any]:
    """Per stage: the median wall time and engine-thread CPU time of a training batch (from
    one batch's start to the next one's in the same epoch), and how many were timed."""
    walls: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    for (where, t0, c0), (nxt, t1, c1) in zip(marks, marks[1:]):
        epoch, epoch_next = where.split(", batch")[0], nxt.split(", batch")[0]
        if epoch != epoch_next or not where.startswith("stage "):
            continue  # validation, mining … lie between two epochs' batches
        stage = where.split(",")[0].split()[1]
        walls.setdefault(stage, []).append(t1 - t0)
        cpus.setdefault(stage, []).append(c1 - c0)
    return {"batch_ms": {s: 1000 * statistics.median(v) for s, v in walls.items()},
            "engine_cpu_ms": {s: 1000 * statistics.median(v) for s, v in cpus.items()},
            "batches": {s: len(v) for s, v in walls.items()}}


def child_headless(settings) -> dict[str, Any]:
    from ashem_engine.run import run_ashem
    from ashem_engine.sinks import build_sinks

    events: list = []
    result = run_ashem(settings, sinks=build_sinks(extra=(events.append,)))
    assert result.status == "finished", result.error
    return throughput(events)


def child_thread(settings) -> dict[str, Any]:
    import threading

    out: dict[str, Any] = {}
    worker = threading.Thread(target=lambda: out.update(r=child_headless(settings)))
    worker.start()
    worker.join()
    return out["r"]


def child_app(settings, size: tuple[int, int], interval: float) -> dict[str, Any]:
    import asyncio
    import threading

    from textual.events import Key

    from ashem_app.app import AshemApp
    from ashem_app.sources import LiveSource

    class BenchApp(AshemApp):
        """The real app, plus a hook that says when a key's action has reached the screen,
        and a count of the structural redraws (batches with more than BatchProgress)."""

        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.key_done = threading.Event()
            self.seen: list = []
            self.redraws = 0

        def _apply(self, batch) -> None:
            self.redraws += any(e.kind != "BatchProgress" for e in batch)
            super()._apply(batch)

        def ingest(self, event) -> None:
            self.seen.append(event)
            super().ingest(event)

        def action_next_chart(self) -> None:
            super().action_next_chart()
            self.call_after_refresh(self.key_done.set)

    keys: list[float] = []
    pings: list[float] = []
    stop = threading.Event()

    def press(app: BenchApp) -> None:  # from a thread of its own while training runs
        while not stop.wait(interval):
            if app.view.status != "running":
                continue
            app.key_done.clear()
            t0 = time.perf_counter()
            app.post_message(Key("n", None))
            if app.key_done.wait(5.0):
                keys.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            try:
                app.call_from_thread(lambda: None)
            except RuntimeError:  # the app has just closed
                return
            pings.append(time.perf_counter() - t0)

    async def run() -> BenchApp:
        app = BenchApp(LiveSource(settings))
        async with app.run_test(size=size):
            presser = threading.Thread(target=press, args=(app,), daemon=True)
            presser.start()
            while not app.source.ended:
                if app._exception is not None:
                    raise app._exception
                await asyncio.sleep(0.1)
            stop.set()
            presser.join(10)
            await asyncio.sleep(0.3)
            assert app.view.status == "finished", app.view.failed
            app.exit()
        return app

    ui_cpu = time.thread_time()  # this (main) thread is the UI thread
    app = asyncio.run(run())
    figures = throughput(app.seen)
    figures.update(keys_ms=[round(k * 1000, 1) for k in keys],
                   pings_ms=[round(p * 1000, 1) for p in pings],
                   app_events=app.view.events_seen, redraws=app.redraws,
                   ui_cpu_s=round(time.thread_time() - ui_cpu, 3))
    return figures


def child(args) -> int:
    if args.child in ("app", "thread"):  # the app's process set-up, as `ashem` does
        from ashem_app.__main__ import prepare_process

        prepare_process()
    from ashem_engine.settings import load_settings

    settings = load_settings(args.settings, args.overrides)
    install_batch_clock()
    if args.child == "headless":
        figures = child_headless(settings)
    elif args.child == "thread":
        figures = child_thread(settings)
    else:
        width, height = (int(x) for x in args.size.lower().split("x"))
        figures = child_app(settings, (width, height), args.key_interval)
    figures.update(batch_times(BATCH_MARKS))
    print("RESULT " + json.dumps(figures), flush=True)
    return 0


# -- parent ------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def spawn(mode: str, args, overrides: list[str]) -> dict[str, Any]:
    argv = [sys.executable, str(Path(__file__).resolve()), "--child", mode,
            "--settings", args.settings, "--size", args.size,
            "--key-interval", str(args.key_interval),
            *[a for o in overrides for a in ("--set", o)]]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"bench_app: the {mode} run failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default=str(ROOT / "settings.toml"))
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="TABLE.KEY=VALUE")
    p.add_argument("--repeats", type=int, default=6,
                   help="headless/app pairs (default 6; 8 to resolve 2 %% on a quiet machine)")
    p.add_argument("--quick", action="store_true",
                   help="one pair and no pass rule: a smoke run")
    p.add_argument("--size", default="100x30", help="terminal size of the app run")
    p.add_argument("--key-interval", type=float, default=1.0,
                   help="seconds between key presses during training (default 1)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    p.add_argument("--sample-s", type=float, default=None, metavar="S",
                   help="run.machine_sample_s of every run: the machine sampler's interval "
                        "(0 = none; default: the settings')")
    p.add_argument("--modes", default="headless,app",
                   help="which runs per repeat (default headless,app; add thread to "
                        "separate the cost of the engine thread from the UI's)")
    p.add_argument("--child", choices=("headless", "thread", "app"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.repeats = 1
    return args


def run_all(args, modes: list[str], overrides: list[str]) -> dict[str, list[dict]]:
    """`repeats` rounds of every mode, the order reversed every other round (H A, A H …)."""
    results: dict[str, list[dict]] = {m: [] for m in modes}
    for i in range(args.repeats):
        for mode in (modes if i % 2 == 0 else modes[::-1]):
            r = spawn(mode, args, overrides)
            results[mode].append(r)
            tps = ", ".join(f"stage {s} {v:,.0f}" for s, v in r["tokens_per_s"].items())
            batch = ", ".join(f"{v:.2f}" for v in r["batch_ms"].values())
            print(f"[{i + 1}/{args.repeats}] {mode:8s} batch ms (median) {batch} · tokens/s "
                  f"{tps} · wall {r['wall_s']:.2f} s", flush=True)
    return results


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % confidence interval (Student t; nan for one
    value), as a study's tables give them (stats.aggregate)."""
    figures = aggregate(values)
    half = figures["half_width"]
    return figures["mean"], math.nan if half is None else half


# figure: (label, how to read it from a run, higher is faster)
FIGURES = (
    ("stage 1 batch ms", lambda r: r["batch_ms"].get("1"), False),
    ("stage 2 batch ms", lambda r: r["batch_ms"].get("2"), False),
    ("stage 1 engine CPU ms", lambda r: r["engine_cpu_ms"].get("1"), False),
    ("stage 1 tokens/s", lambda r: r["tokens_per_s"].get("1"), True),
    ("wall s", lambda r: r["wall_s"], False),
)


def spread(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else math.nan
    return f"{statistics.mean(values):.2f} ±{sd:.2f} [{min(values):.2f}–{max(values):.2f}]"


def report(results: dict[str, list[dict]]) -> dict[str, float]:
    """The table: per figure each mode's mean ± stdev [min–max], and the paired ratios as
    app speed / headless speed (1.0: no cost): mean ± 95 % CI [min–max]."""
    print(f"\n{'':22s}{'headless: mean ±sd [min–max]':>42s}{'app: mean ±sd [min–max]':>42s}"
          f"   app/headless speed: mean ±95 % CI [min–max]")
    ratios: dict[str, float] = {}
    for label, read, higher_faster in FIGURES:
        h = [read(r) for r in results["headless"]]
        a = [read(r) for r in results["app"]]
        if any(v is None for v in h + a):
            continue
        paired = [(x / y if higher_faster else y / x) for x, y in zip(a, h)]
        mean, half = interval(paired)
        ratios[label] = mean
        print(f"{label:22s}{spread(h):>42s}{spread(a):>42s}   {mean:.3f} ±{half:.3f} "
              f"[{min(paired):.3f}–{max(paired):.3f}]")
    return ratios


def report_app(results: dict[str, list[dict]]) -> Optional[float]:
    """Key latency, the UI thread's CPU, events and redraws; the key p95 (ms) or None."""
    apps = results["app"]
    keys = [k for r in apps for k in r["keys_ms"]]
    pings = [k for r in apps for k in r["pings_ms"]]
    print()
    if keys:
        print(f"key → screen: n={len(keys)}  median {statistics.median(keys):.1f} ms  "
              f"p95 {pct(keys, 0.95):.1f} ms  max {max(keys):.1f} ms")
    else:
        print("key → screen: no key presses happened while training ran (run too short)")
    if pings:
        print(f"call_from_thread ping: median {statistics.median(pings):.1f} ms  "
              f"p95 {pct(pings, 0.95):.1f} ms")
    ui = [r["ui_cpu_s"] / r["wall_s"] for r in apps if r.get("wall_s")]
    print(f"UI thread CPU: {[r['ui_cpu_s'] for r in apps]} s "
          f"({100 * statistics.mean(ui):.1f} % of one core over the run); events applied "
          f"{[r['app_events'] for r in apps]}, structural redraws {[r['redraws'] for r in apps]}")
    return pct(keys, 0.95) if keys else None


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    runs_dir = tempfile.mkdtemp(prefix="ashem-bench-")
    overrides = [*args.overrides, "run.pause_at=[]", f"run.runs_dir={runs_dir}",
                 "run.name=bench"]
    if args.sample_s is not None:
        overrides.append(f"run.machine_sample_s={args.sample_s}")
    from ashem_engine.settings import SettingsError, load_settings

    try:
        load_settings(args.settings, overrides)
    except SettingsError as e:
        print(f"bench_app: settings: {e}", file=sys.stderr)
        return 2
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if "headless" not in modes or "app" not in modes:
        print("bench_app: --modes must include headless and app", file=sys.stderr)
        return 2
    results = run_all(args, modes, overrides)
    ratios = report(results)
    key_p95 = report_app(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.quick:
        return 0
    ok = ratios.get("stage 1 batch ms", 0.0) >= 0.98 and key_p95 is not None \
        and key_p95 <= 100
    print("PASS" if ok else "FAIL", "(stage-1 batch time in the app >= 0.98 x headless "
          "speed, mean of the paired ratios; key p95 <= 100 ms)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
