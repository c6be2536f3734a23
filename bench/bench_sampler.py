"""What the machine sampler (ashem_engine/machine.py) costs a run: at most 0.5 % of training
throughput is the bar (issue 24).

Two figures, from the same short headless runs, the sampler off and on in turn (off, on;
on, off; … so that machine drift hits both), each in a fresh process:

- the sampler's own CPU: its thread's CPU seconds (time.thread_time at its end) against the
  whole process's CPU seconds. On a machine whose cores training keeps busy, that share is
  what it takes from training: the direct measure, exact to the thread clock's resolution;
- the median training-batch time with the sampler on against off (bench_app's batch clock):
  the paired ratio with its 95 % interval. Its half-width says how small a cost the pair
  could see; a sampler this cheap hides inside it.

    python bench/bench_sampler.py --pairs 4 --sample-s 5 --set data.path=../shared/data/wikitext-2-raw \\
        --set data.train_samples=1280 --set stages.1.max_epochs=2 --set stages.2.max_epochs=2

`--sample-s` is the interval of the "on" runs (default 5, the settings' default); a shorter one
(0.5) shows how the cost grows with the rate.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_app import BATCH_MARKS, batch_times, install_batch_clock, throughput  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def child(overrides: list[str], peak_s: float | None) -> dict[str, Any]:
    import ashem_engine.run as run_module
    from ashem_engine.machine import MachineSampler
    from ashem_engine.settings import load_settings
    from ashem_engine.sinks import build_sinks

    samplers: list[MachineSampler] = []

    class Recorded(MachineSampler):
        def __init__(self, *args, **kwargs):
            if peak_s is not None:
                kwargs["peak_every_s"] = peak_s
            super().__init__(*args, **kwargs)
            samplers.append(self)

    run_module.MachineSampler = Recorded
    install_batch_clock()
    settings = load_settings(str(ROOT / "settings.toml"), overrides=tuple(overrides))
    events: list = []
    cpu0 = time.process_time()
    result = run_module.run_ashem(settings, sinks=build_sinks(extra=(events.append,)))
    assert result.status == "finished", result.error
    sampler = samplers[0]
    return {**throughput(events), **batch_times(BATCH_MARKS),
            "process_cpu_s": time.process_time() - cpu0,
            "sampler_cpu_s": sampler.cpu_seconds if sampler.on else 0.0,
            "samples": sum(e.kind == "MachineSampled" for e in events)}


def run_child(overrides: list[str], peak_s: float | None) -> dict[str, Any]:
    peak = [] if peak_s is None else ["--peak-s", str(peak_s)]
    out = subprocess.run([sys.executable, __file__, "--child", *peak, *sum(
        (["--set", o] for o in overrides), [])], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"bench_sampler: a child run failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def report(pairs: list[tuple[dict, dict]], sample_s: float) -> None:
    from ashem_engine.stats import aggregate

    ratios = [off["batch_ms"]["1"] / on["batch_ms"]["1"] for off, on in pairs]
    share = [on["sampler_cpu_s"] / on["process_cpu_s"] for _, on in pairs]
    per_sample = [on["sampler_cpu_s"] / max(on["samples"], 1) for _, on in pairs]
    speed, cost = aggregate(ratios), aggregate(share)
    print(f"sampler every {sample_s:g} s, {len(pairs)} pairs")
    for off, on in pairs:
        print(f"  stage-1 batch {off['batch_ms']['1']:.2f} ms off / {on['batch_ms']['1']:.2f} ms "
              f"on; sampler {on['sampler_cpu_s'] * 1000:.1f} ms CPU of "
              f"{on['process_cpu_s']:.1f} s, {on['samples']} samples in {on['wall_s']:.1f} s")
    half = speed["half_width"]
    print(f"speed with / without: {speed['mean']:.4f}"
          + (f" ± {half:.4f} (95 %)" if half is not None else ""))
    print(f"sampler's own CPU: {100 * cost['mean']:.4f} % of the process's "
          f"(max {100 * max(share):.4f} %), {1000 * max(per_sample):.2f} ms per sample at most")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--sample-s", type=float, default=5.0)
    p.add_argument("--peak-s", type=float, default=None,
                   help="how often the sampler reads resident memory for the peaks "
                        "(default: machine.PEAK_EVERY_S)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.overrides, args.peak_s)))
        return 0
    runs_dir = tempfile.mkdtemp(prefix="ashem-bench-sampler-")
    base = [*args.overrides, "run.pause_at=[]", f"run.runs_dir={runs_dir}", "run.name=bench"]
    off, on = [*base, "run.machine_sample_s=0"], [*base, f"run.machine_sample_s={args.sample_s}"]
    pairs = []
    for k in range(args.pairs):
        first, second = (off, on) if k % 2 == 0 else (on, off)
        a, b = run_child(first, args.peak_s), run_child(second, args.peak_s)
        pairs.append((a, b) if k % 2 == 0 else (b, a))
    report(pairs, args.sample_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
