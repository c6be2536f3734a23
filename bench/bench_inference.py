"""Inference speed: the 2-layer model, the plain 4-layer model, the routed model computing
everything, and the real early exit (cascade.py), on the report split of a finished run.

    python bench/bench_inference.py RUN_DIR [--data DIR] [--device cpu|cuda] [--batches N]
                                    [--repeats R] [--threads T] [--json FILE]

"Compute everything" runs every block and every exit's head for every token and decides
afterwards; the real early exit runs only what the decision needs. RUN_DIR is a finished
two-exit run with a sweep (its stage-1 and final checkpoints, its exit
classifier and sweep.json). The routed paths use the run's inference modes; max-softmax
uses the run's own threshold, the exit classifier its q = 0.5 threshold from the sweep. Each
path's decisions are checked against computing everything before it is timed. Tokens/s is
the median over the repeats; run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ashem_engine.cascade import Cascade, route
from ashem_engine.costs import CostModel
from ashem_engine.data import load_corpus
from ashem_engine.head import exit_stats
from ashem_engine.model import EarlyExitLM
from ashem_engine.names import CLASSIFIER, SOFTMAX
from ashem_engine.rundir import (BEST_WEIGHTS_FILE, CLASSIFIERS_FILE, SETTINGS_FILE, SUMMARY_FILE,
                                 SWEEP_FILE, load_checkpoint)
from ashem_engine.run import choose_threads
from ashem_engine.settings import settings_from_dict
from ashem_engine.signals import ExitClassifier

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "wikitext-2-raw"


def load_model(path: Path, layers: int, vocab: int, cfg, device) -> EarlyExitLM:
    model = EarlyExitLM(vocab, layers, cfg)
    model.load_state_dict(load_checkpoint(path)["model"])
    return model.to(device).eval()


def timed(fn, batches, device, repeats: int) -> tuple[float, list]:
    """Median seconds for one pass over the batches, and the last pass's outputs."""
    def one_pass():
        return [fn(batches.x[i], batches.y[i]) for i in range(len(batches))]

    out = one_pass()  # warm-up
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        out = one_pass()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json")
    return ap.parse_args()


@dataclass
class FinishedRun:
    """What the bench needs of a finished run: its models, report batches and exits."""

    path: Path
    settings: object
    report: object  # the first --batches batches of the report split, on the device
    vocab: int
    base: EarlyExitLM  # the stage-1 model
    model: EarlyExitLM  # the final model
    exit_layers: list
    modes: tuple
    signals: dict  # signal -> (thresholds, classifiers or None)


def load_run(args: argparse.Namespace, device: torch.device) -> FinishedRun:
    run = Path(args.run_dir)
    summary = json.loads((run / SUMMARY_FILE).read_text())
    settings = settings_from_dict(json.loads((run / SETTINGS_FILE).read_text()))
    settings = settings.replace(data=type(settings.data)(**{**settings.data.__dict__,
                                                          "path": args.data}))
    sweep = json.loads((run / SWEEP_FILE).read_text())
    corpus = load_corpus(settings.data)
    report = corpus.batches[settings.evaluation.split]
    n = min(args.batches, len(report))
    report = type(report)(report.x[:n].to(device), report.y[:n].to(device))
    vocab, cfg = len(corpus.vocab), settings.model
    exit_layers = summary["final"]["exit_layers"]
    last = len(settings.stages)
    base = load_model(run / BEST_WEIGHTS_FILE.format(1), exit_layers[0], vocab, cfg, device)
    model = load_model(run / BEST_WEIGHTS_FILE.format(last), exit_layers[-1], vocab, cfg, device)
    clf_state = load_checkpoint(run / CLASSIFIERS_FILE, required="classifiers")
    classifiers = [ExitClassifier(c["weight"].to(device), c["bias"].to(device))
                   for c in clf_state["classifiers"]]
    (clf_series,) = [s for s in sweep["series"] if s.get("signal") == CLASSIFIER
                     and s["kind"] == "sweep"]
    (clf_mid,) = [p for p in clf_series["points"] if p["quantile"] == 0.5]
    signals = {SOFTMAX: (summary["final"]["thresholds"], None),
               CLASSIFIER: (clf_mid["thresholds"], classifiers)}
    return FinishedRun(run, settings, report, vocab, base, model, exit_layers,
                       tuple(summary["final"]["inference_modes"]), signals)


def paths_of(r: FinishedRun) -> list:
    """(name, batch -> outputs, signal, kind) for each path timed."""
    def plain(m):
        return lambda x, y: exit_stats(m.hidden(x).reshape(-1, m.cfg.dim), m.head.weight, y)

    paths = [(f"{r.exit_layers[0]}-layer model (stage 1)", plain(r.base), None, None),
             (f"{r.exit_layers[-1]}-layer model, no exit", plain(r.model), None, None)]
    for signal, (thresholds, clf) in r.signals.items():
        cascade = Cascade.of(r.exit_layers, thresholds, r.modes, clf)
        paths.append((f"routed, compute everything ({signal})",
                      lambda x, y, c=cascade: route(r.model, c, x, y, every_exit=True),
                      signal, "everything"))
        paths.append((f"real early exit ({signal})",
                      lambda x, y, c=cascade: route(r.model, c, x, y, only_needed=True),
                      signal, "real"))
    return paths


def measure(r: FinishedRun, device: torch.device, repeats: int) -> list[dict]:
    """Times every path; each real early exit is checked against computing everything."""
    tokens, seq_len, cfg = r.report.tokens, r.report.x.shape[-1], r.settings.model
    plain_macs = CostModel(cfg, r.vocab, seq_len, tuple(r.exit_layers), r.modes).plain()
    results, reference = [], {}
    for name, fn, signal, kind in paths_of(r):
        seconds, out = timed(fn, r.report, device, repeats)
        row = {"path": name, "tokens_per_s": tokens / seconds, "seconds": seconds}
        if signal:
            exits = torch.cat([o.exit_index for o in out])
            if kind == "everything":
                reference[signal] = out
            else:
                same = all(torch.equal(a.exit_index, b.exit_index)
                           for a, b in zip(out, reference[signal]))
                close = max(float((a.nll - b.nll).abs().max())
                            for a, b in zip(out, reference[signal]))
                row.update(same_exits=same, max_nll_difference=close)
            fractions = torch.bincount(exits, minlength=len(r.exit_layers)).float() / tokens
            costs = CostModel(cfg, r.vocab, seq_len, tuple(r.exit_layers), r.modes, signal)
            row["deep_ratio"] = 1.0 - float(fractions[0])
            row["macs_relative"] = (costs.relative(fractions.tolist()) if kind == "real"
                                    else costs.compute_everything() / plain_macs)
        row["ppl"] = float(torch.exp(torch.cat([o.nll for o in out]).double().mean()))
        results.append(row)
    return results


def print_table(r: FinishedRun, results: list[dict], machine: str) -> None:
    n, batch, seq_len = r.report.x.shape
    print(f"{r.path.name}: modes {list(r.modes)}, {n} batches of {batch}×{seq_len} "
          f"({r.report.tokens:,} tokens, {r.settings.evaluation.split}), {machine}, "
          f"torch {torch.__version__}")
    print(f"{'path':40} {'tokens/s':>10} {'vs plain':>9} {'MACs vs plain':>14} "
          f"{'deep %':>7} {'PPL':>8}  check")
    plain_rate = results[1]["tokens_per_s"]
    for row in results:
        macs = f"{100 * row['macs_relative']:.1f}%" if "macs_relative" in row else ""
        deep = f"{100 * row['deep_ratio']:.1f}" if "deep_ratio" in row else ""
        check = ("" if "same_exits" not in row else
                 ("same exits" if row["same_exits"] else "EXITS DIFFER")
                 + f", |ΔNLL| ≤ {row['max_nll_difference']:.1e}")
        print(f"{row['path']:40} {row['tokens_per_s']:>10,.0f} "
              f"{100 * row['tokens_per_s'] / plain_rate:>8.1f}% {macs:>14} {deep:>7} "
              f"{row['ppl']:>8.2f}  {check}")


@torch.no_grad()
def main() -> int:
    args = parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(choose_threads(args.threads))
    r = load_run(args, device)
    results = measure(r, device, args.repeats)
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, "
                    f"{torch.get_num_threads()} threads")
    print_table(r, results, machine)
    if args.json:
        Path(args.json).write_text(json.dumps({"run": str(r.path), "device": machine,
                                               "modes": list(r.modes),
                                               "tokens": r.report.tokens,
                                               "results": results}, indent=2))
    return 0 if all(row.get("same_exits", True) for row in results) else 1


if __name__ == "__main__":
    sys.exit(main())
