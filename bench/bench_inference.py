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
from pathlib import Path

import torch

from ashem_engine.cascade import Cascade, route
from ashem_engine.costs import CostModel
from ashem_engine.data import load_corpus
from ashem_engine.head import exit_stats
from ashem_engine.model import EarlyExitLM
from ashem_engine.names import CLASSIFIER, SOFTMAX
from ashem_engine.rundir import load_checkpoint
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


@torch.no_grad()
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batches", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()
    run = Path(args.run_dir)
    summary = json.loads((run / "summary.json").read_text())
    settings = settings_from_dict(json.loads((run / "settings.json").read_text()))
    settings = settings.replace(data=type(settings.data)(**{**settings.data.__dict__,
                                                          "path": args.data}))
    sweep = json.loads((run / "sweep.json").read_text())
    device = torch.device(args.device)
    torch.set_num_threads(choose_threads(args.threads))
    corpus = load_corpus(settings.data)
    report = corpus.batches[settings.evaluation.split]
    n = min(args.batches, len(report))
    report = type(report)(report.x[:n].to(device), report.y[:n].to(device))
    vocab, cfg = len(corpus.vocab), settings.model
    exit_layers = summary["final"]["exit_layers"]
    modes = tuple(summary["final"]["inference_modes"])
    last = len(settings.stages)
    base = load_model(run / "stage-1-best.pt", exit_layers[0], vocab, cfg, device)
    model = load_model(run / f"stage-{last}-best.pt", exit_layers[-1], vocab, cfg, device)
    clf_state = load_checkpoint(run / "exit-classifiers.pt", required="classifiers")
    classifiers = [ExitClassifier(c["weight"].to(device), c["bias"].to(device))
                   for c in clf_state["classifiers"]]
    (clf_series,) = [s for s in sweep["series"] if s.get("signal") == CLASSIFIER
                     and s["kind"] == "sweep"]
    (clf_mid,) = [p for p in clf_series["points"] if p["quantile"] == 0.5]
    signals = {SOFTMAX: (summary["final"]["thresholds"], None),
               CLASSIFIER: (clf_mid["thresholds"], classifiers)}

    def plain(m):
        return lambda x, y: exit_stats(m.hidden(x).reshape(-1, cfg.dim), m.head.weight, y)

    paths = [(f"{exit_layers[0]}-layer model (stage 1)", plain(base), None, None),
             (f"{exit_layers[-1]}-layer model, no exit", plain(model), None, None)]
    for signal, (thresholds, clf) in signals.items():
        cascade = Cascade.of(exit_layers, thresholds, modes, clf)
        paths.append((f"routed, compute everything ({signal})",
                      lambda x, y, c=cascade: route(model, c, x, y, every_exit=True),
                      signal, "everything"))
        paths.append((f"real early exit ({signal})",
                      lambda x, y, c=cascade: route(model, c, x, y, only_needed=True), signal,
                      "real"))

    tokens = report.tokens
    seq_len = report.x.shape[-1]
    plain_macs = CostModel(cfg, vocab, seq_len, tuple(exit_layers), modes).plain()
    results, reference = [], {}
    for name, fn, signal, kind in paths:
        seconds, out = timed(fn, report, device, args.repeats)
        row = {"path": name, "tokens_per_s": tokens / seconds, "seconds": seconds}
        if signal:
            exits = torch.cat([r.exit_index for r in out])
            if kind == "everything":
                reference[signal] = out
            else:
                same = all(torch.equal(a.exit_index, b.exit_index)
                           for a, b in zip(out, reference[signal]))
                close = max(float((a.nll - b.nll).abs().max())
                            for a, b in zip(out, reference[signal]))
                row.update(same_exits=same, max_nll_difference=close)
            fractions = torch.bincount(exits, minlength=len(exit_layers)).float() / tokens
            costs = CostModel(cfg, vocab, seq_len, tuple(exit_layers), modes, signal)
            row["deep_ratio"] = 1.0 - float(fractions[0])
            row["macs_relative"] = (costs.relative(fractions.tolist()) if kind == "real"
                                    else costs.compute_everything() / plain_macs)
            row["ppl"] = float(torch.exp(torch.cat([r.nll for r in out]).double().mean()))
        else:
            row["ppl"] = float(torch.exp(torch.cat([r.nll for r in out]).double().mean()))
        results.append(row)
    plain_rate = results[1]["tokens_per_s"]
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{platform.processor() or platform.machine()}, "
                    f"{torch.get_num_threads()} threads")
    print(f"{run.name}: modes {list(modes)}, {n} batches of {report.x.shape[1]}×{seq_len} "
          f"({tokens:,} tokens, {settings.evaluation.split}), {machine}, "
          f"torch {torch.__version__}")
    print(f"{'path':40} {'tokens/s':>10} {'vs plain':>9} {'MACs vs plain':>14} "
          f"{'deep %':>7} {'PPL':>8}  check")
    for r in results:
        macs = f"{100 * r['macs_relative']:.1f}%" if "macs_relative" in r else ""
        deep = f"{100 * r['deep_ratio']:.1f}" if "deep_ratio" in r else ""
        check = ("" if "same_exits" not in r else
                 ("same exits" if r["same_exits"] else "EXITS DIFFER")
                 + f", |ΔNLL| ≤ {r['max_nll_difference']:.1e}")
        print(f"{r['path']:40} {r['tokens_per_s']:>10,.0f} "
              f"{100 * r['tokens_per_s'] / plain_rate:>8.1f}% {macs:>14} {deep:>7} "
              f"{r['ppl']:>8.2f}  {check}")
    if args.json:
        Path(args.json).write_text(json.dumps({"run": str(run), "device": machine,
                                               "modes": list(modes), "tokens": tokens,
                                               "results": results}, indent=2))
    ok = all(r.get("same_exits", True) for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
