"""Training throughput per stage: fp32 / bf16 × 1 process / N processes (torchrun, gloo).

Each configuration is a real shortened run in a fresh process (or N processes started by
torchrun, which share the machine's cores: run.threads = 0 gives each its share), in turns
(A, B, C, D, A, B, ...) so that machine drift hits every configuration alike. Reported per
configuration and stage: training tokens per second (the engine's own BatchProgress figure,
at the end of each epoch: tokens of the whole global batch per second of training), mean and
range over the repeats, and the run's wall clock.

    python bench/bench_scale.py --repeats 2 --set data.path=../shared/data/wikitext-2-raw \\
        --set data.train_samples=2560 --set stages.1.max_epochs=1 --set stages.2.max_epochs=1
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ashem_engine.rundir import EVENTS_FILE

ROOT = Path(__file__).resolve().parents[1]


def command(procs: int) -> list[str]:
    if procs == 1:
        return [sys.executable, "-m", "ashem_engine"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={procs}", "-m", "ashem_engine"]


def one_run(procs: int, precision: str, overrides: list[str], runs: Path) -> dict:
    sets = [x for o in [*overrides, f"run.precision={precision}", f"run.runs_dir={runs}",
                        'run.pause_at=[]', "evaluation.sweep_points=0"] for x in ("--set", o)]
    started = time.perf_counter()
    done = subprocess.run([*command(procs), "run", "--quiet", *sets], cwd=ROOT,
                          capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{procs} × {precision} failed:\n{done.stderr[-2000:]}")
    (run_dir,) = runs.iterdir()
    events = [json.loads(line) for line in (run_dir / EVENTS_FILE).read_text().splitlines()]
    last = {}
    for e in events:
        if e["kind"] == "BatchProgress":
            last[(e["stage"], e["epoch"])] = e["tokens_per_s"]
    per_stage: dict[int, list] = {}
    for (stage, _), rate in sorted(last.items()):
        per_stage.setdefault(stage, []).append(rate)
    return {"wall": wall, **{f"stage {s}": statistics.mean(r) for s, r in per_stage.items()}}


def spread(values: list[float]) -> str:
    mean = statistics.mean(values)
    return f"{mean:>8,.0f} [{min(values):,.0f}–{max(values):,.0f}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--procs", type=int, default=2, help="processes of the parallel runs")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    configs = [(p, prec) for p in (1, args.procs) for prec in ("fp32", "bf16")]
    results: dict = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for i, (procs, precision) in enumerate(configs):
                runs = Path(tmp) / f"{r}-{i}"
                results[(procs, precision)].append(one_run(procs, precision,
                                                           args.overrides, runs))
                print(f"repeat {r + 1}: {procs} × {precision} "
                      f"{results[(procs, precision)][-1]}", file=sys.stderr)
    keys = [k for k in results[configs[0]][0] if k.startswith("stage")]
    print(f"{'processes × precision':<24}" + "".join(f"{k + ' tok/s':>28}" for k in keys)
          + f"{'wall s':>10}")
    for (procs, precision), runs in results.items():
        cells = "".join(f"{spread([run[k] for run in runs]):>28}" for k in keys)
        print(f"{f'{procs} × {precision}':<24}{cells}"
              f"{statistics.mean(run['wall'] for run in runs):>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
