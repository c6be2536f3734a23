"""The whole pipeline on a corpus of bench/make_corpus.py's size, in 1 and in N processes,
with each process' peak memory: what issue #22 asks of memory that shards.

    python bench/make_corpus.py /tmp/corpus50m
    python bench/scale_corpus.py /tmp/corpus50m --procs 1 2 [--set k=v]... [--out FILE]

Each run is `ashem-engine run` under torchrun (also for one process, so that the
process group is the same kind), with a small model: dim 32, vocabulary cap 16,384, one
epoch per stage, whole splits, the hard tokens mined on validation (every validation token's
confidence goes into the threshold). Prints one table: per run, each rank's peak RSS
(getrusage), the states its stage-2 task held (StageStarted.held_bytes), the tokens the
threshold was computed over, the figures and the wall time.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ashem_engine.rundir import EVENTS_FILE, SUMMARY_FILE

SMALL = ["model.dim=32", "model.heads=4", "model.ffn_hidden=128", "data.vocab_size=16384",
         "data.train_samples=0", "data.eval_samples=0", "stages.1.max_epochs=1",
         "stages.2.max_epochs=1", "run.pause_at=[]", "evaluation.sweep_points=0",
         "run.name=scale-corpus"]


def child(rss_dir: str, argv: list[str]) -> int:
    """One torchrun process: the engine's command line, then this process' peak RSS."""
    from ashem_engine.__main__ import main

    code = main(argv)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rank = os.environ.get("RANK", "0")
    Path(rss_dir, f"rank{rank}.json").write_text(json.dumps({"rank": int(rank),
                                                            "peak_rss_kib": peak_kib}))
    return code


def run(corpus: str, procs: int, extra: list[str], work: Path) -> dict:
    runs, rss = work / f"runs-{procs}", work / f"rss-{procs}"
    rss.mkdir(parents=True, exist_ok=True)
    sets = [a for kv in [*SMALL, f"data.path={corpus}", f"run.runs_dir={runs}", *extra]
            for a in ("--set", kv)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={procs}", __file__, "--child", str(rss), "run", "--quiet", *sets]
    started = time.monotonic()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"scale_corpus: {procs} process(es) failed (exit {done.returncode}): "
                         f"{(done.stderr.strip().splitlines() or ['?'])[-1]}")
    (run_dir,) = runs.iterdir()
    events = [json.loads(line) for line in (run_dir / EVENTS_FILE).read_text().splitlines()]
    return {"procs": procs, "seconds": round(seconds, 1), "run_dir": str(run_dir),
            "ranks": sorted((json.loads(p.read_text()) for p in rss.iterdir()),
                            key=lambda r: r["rank"]),
            "summary": json.loads((run_dir / SUMMARY_FILE).read_text()), "events": events}


def table(results: list[dict]) -> str:
    lines = ["| processes | rank | peak RSS (MiB) | stage-2 states held per process (MiB) | "
             "threshold over tokens | stage-1 val PPL | final PPL | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        events = r["events"]
        stage2 = next(e for e in events if e["kind"] == "StageStarted" and e["stage"] == 2)
        threshold = next(e for e in events if e["kind"] == "ThresholdComputed")
        s = r["summary"]
        for rank in r["ranks"]:
            lines.append(
                f"| {r['procs']} | {rank['rank']} | {rank['peak_rss_kib'] / 1024:,.0f} | "
                f"{stage2.get('held_bytes', 0) / 2**20:,.1f} | {threshold['tokens']:,} | "
                f"{s['stages'][0]['best_val_ppl']:.2f} | {s['final']['ppl']:.2f} | "
                f"{r['seconds']:,.0f} |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        return child(argv[1], argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus")
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--out", help="also write the results (JSON, events left out)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="scale-corpus-"))
    results = [run(args.corpus, n, args.overrides, work) for n in args.procs]
    print(table(results))
    if args.out:
        Path(args.out).write_text(json.dumps(
            [{k: v for k, v in r.items() if k != "events"} for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
