"""Does the dashboard slow training down, and does it answer keys while training runs?

Runs the same shortened real run headless (run_ashem with no UI) and inside the app
(AshemApp in-process through App.run_test, which renders every frame like a terminal would,
only without writing it out), alternating H, A, H, A … so that machine drift hits both.
Reports, per mode, the engine's own training throughput (BatchProgress.tokens_per_s at the
end of each epoch, busy time only) and the wall clock from RunStarted to the last StageEnded
(everything: training, validation, mining, and the sink), their ratios, and the latency of
key presses sent while training runs:

- key: a real key event ("n", next chart) posted from another thread, until the action has
  run and the screen has been refreshed (call_after_refresh);
- ping: App.call_from_thread round trip from another thread.

Pass: app throughput >= 95 % of headless, key p95 <= 200 ms.

Example (a few minutes on 2 cores; settings as for the app, overrides as `--set`):

    python bench/bench_app.py --set data.path=../shared/data/wikitext-2-raw \
        --set data.train_samples=640 --set data.eval_fraction=0.2 \
        --set stages.1.max_epochs=2 --set stages.2.max_epochs=2
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from textual.events import Key  # noqa: E402

from ashem_app.app import AshemApp  # noqa: E402
from ashem_engine.events import BatchProgress, EpochEnded, Event, StageEnded  # noqa: E402
from ashem_engine.run import run_ashem  # noqa: E402
from ashem_engine.settings import SettingsError, load_settings  # noqa: E402


def throughput(events: list[Event]) -> dict[str, Any]:
    """Figures of one run, from its events."""
    last: dict[tuple[int, int], BatchProgress] = {}
    for e in events:
        if isinstance(e, BatchProgress):
            last[(e.stage, e.epoch)] = e
    by_stage: dict[int, list[float]] = {}
    for (stage, _), e in sorted(last.items()):
        by_stage.setdefault(stage, []).append(e.tokens_per_s)
    started = next(e.t for e in events if e.kind == "RunStarted")
    ended = max(e.t for e in events if isinstance(e, StageEnded))
    epochs = sum(1 for e in events if isinstance(e, EpochEnded))
    return {
        "tokens_per_s": {s: statistics.mean(v) for s, v in by_stage.items()},
        "wall_s": ended - started,
        "epochs": epochs,
        "status": events[-1].kind,
    }


def run_headless(settings) -> dict[str, Any]:
    events: list[Event] = []
    result = run_ashem(settings, sinks=(events.append,))
    assert result.status == "finished", result.error
    return throughput(events)


class BenchApp(AshemApp):
    """The real app, plus a hook that says when a key's action has reached the screen."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.key_done = threading.Event()
        self.seen: list[Event] = []

    def ingest(self, event: Event) -> None:
        self.seen.append(event)
        super().ingest(event)

    def action_next_chart(self) -> None:
        super().action_next_chart()
        self.call_after_refresh(self.key_done.set)


def press_keys(app: BenchApp, stop: threading.Event, keys: list[float], pings: list[float],
               interval: float) -> None:
    """From a thread of its own while training runs: keys and pings, `interval` apart."""
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


async def _run_app(settings, size, interval: float) -> dict[str, Any]:
    app = BenchApp(settings=settings)
    keys: list[float] = []
    pings: list[float] = []
    stop = threading.Event()
    async with app.run_test(size=size) as _pilot:
        presser = threading.Thread(target=press_keys, args=(app, stop, keys, pings, interval),
                                   daemon=True)
        presser.start()
        while not app.engine_done.is_set():
            if app._exception is not None:
                raise app._exception
            await asyncio.sleep(0.1)
        stop.set()
        presser.join(10)
        await asyncio.sleep(0.3)
        assert app.view.status == "finished", app.view.failed
        app.exit()
    figures = throughput(app.seen)
    figures["keys_ms"] = [round(k * 1000, 1) for k in keys]
    figures["pings_ms"] = [round(p * 1000, 1) for p in pings]
    figures["app_events"] = app.events_applied
    figures["redraws"] = app.redraws
    return figures


def run_in_app(settings, size=(100, 30), interval: float = 1.0) -> dict[str, Any]:
    return asyncio.run(_run_app(settings, size, interval))


def pct(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--settings", default=str(ROOT / "settings.toml"))
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="TABLE.KEY=VALUE")
    p.add_argument("--repeats", type=int, default=2, help="headless/app pairs (default 2)")
    p.add_argument("--size", default="100x30", help="terminal size of the app run")
    p.add_argument("--key-interval", type=float, default=1.0,
                   help="seconds between key presses during training (default 1)")
    p.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = p.parse_args(argv)
    runs_dir = tempfile.mkdtemp(prefix="ashem-bench-")
    try:
        settings = load_settings(args.settings, [*args.overrides, "run.pause_at=[]",
                                                 f"run.runs_dir={runs_dir}",
                                                 "run.name=bench"])
    except SettingsError as e:
        print(f"bench_app: settings: {e}", file=sys.stderr)
        return 2
    width, height = (int(x) for x in args.size.lower().split("x"))

    results: dict[str, list[dict]] = {"headless": [], "app": []}
    for i in range(args.repeats):
        for mode in ("headless", "app"):
            t0 = time.perf_counter()
            if mode == "headless":
                r = run_headless(settings)
            else:
                r = run_in_app(settings, (width, height), args.key_interval)
            r["total_s"] = time.perf_counter() - t0
            results[mode].append(r)
            tps = ", ".join(f"stage {s} {v:,.0f}" for s, v in r["tokens_per_s"].items())
            print(f"[{i + 1}/{args.repeats}] {mode:8s} tokens/s {tps} · wall "
                  f"{r['wall_s']:.2f} s ({r['epochs']} epochs)", flush=True)

    def best(mode: str, stage: int) -> float:
        return max(r["tokens_per_s"].get(stage, 0.0) for r in results[mode])

    def wall(mode: str) -> float:
        return min(r["wall_s"] for r in results[mode])

    stages = sorted(results["headless"][0]["tokens_per_s"])
    keys = [k for r in results["app"] for k in r["keys_ms"]]
    pings = [k for r in results["app"] for k in r["pings_ms"]]
    print()
    print(f"{'':22s}{'headless':>12s}{'in app':>12s}{'app/headless':>14s}")
    ok = True
    for s in stages:
        h, a = best("headless", s), best("app", s)
        ratio = a / h if h else float("nan")
        ok &= ratio >= 0.95
        print(f"{'stage %d tokens/s' % s:22s}{h:12,.0f}{a:12,.0f}{ratio:14.3f}")
    h, a = wall("headless"), wall("app")
    print(f"{'wall s (best)':22s}{h:12.2f}{a:12.2f}{h / a:14.3f}  (speed ratio)")
    ok &= h / a >= 0.95
    print()
    if keys:
        print(f"key → screen: n={len(keys)}  median {statistics.median(keys):.1f} ms  "
              f"p95 {pct(keys, 0.95):.1f} ms  max {max(keys):.1f} ms")
        ok &= pct(keys, 0.95) <= 200
    else:
        print("key → screen: no key presses happened while training ran (run too short)")
        ok = False
    if pings:
        print(f"call_from_thread ping: median {statistics.median(pings):.1f} ms  "
              f"p95 {pct(pings, 0.95):.1f} ms")
    print(f"app events applied: {[r['app_events'] for r in results['app']]}, structural "
          f"redraws: {[r['redraws'] for r in results['app']]}")
    print("PASS" if ok else "FAIL", "(app >= 95 % of headless throughput, key p95 <= 200 ms)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
