"""Tokens per second of the engine's three hot loops at the spec's full size.

    python bench/bench_engine.py [--data DIR] [--threads 1 2] [--batches 12] [--naive]
                                 [--sample-s S]

- stage-1 training: the engine's training step (stages.train_epoch) of a 2-layer model on
  64 × 32 train batches (fused head, fused AdamW);
- stage-2 training: its step of the new layers on 64 hard tokens (length-1 sequences);
- routed evaluation: two-exit evaluation over validation batches.
With --naive, the same steps the textbook way (full logits + F.cross_entropy, for-loop AdamW),
which is what the reference implementation does, for comparison. With --sample-s S, the
machine sampler of a run (machine.py, run.machine_sample_s = S) samples the process beside the
timed loops: its cost is the difference from a run without it (S = 0, the default). Results go
to stdout as a table and, with --json FILE, as JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ashem_engine.cascade import Cascade, evaluate
from ashem_engine.control import RunControl
from ashem_engine.data import Batches, load_corpus
from ashem_engine.machine import MachineSampler
from ashem_engine.mining import HardTokens, quantile_threshold
from ashem_engine.model import EarlyExitLM
from ashem_engine.settings import DataSettings, Settings
from ashem_engine.stages import HardTokenTask, SequenceTask, StageTask, make_optimizer, train_epoch

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw"


def timed(step, n: int, warmup: int = 2) -> float:
    for i in range(warmup):
        step(i)
    start = time.perf_counter()
    for i in range(n):
        step(warmup + i)
    return time.perf_counter() - start


def textbook(task: StageTask) -> StageTask:
    """The task with the reference's loss: the full logits, then F.cross_entropy."""
    def loss(index: int, rows=None) -> torch.Tensor:
        hidden, targets = task.batch(index, rows)
        return F.cross_entropy(task.model.head(hidden), targets)

    task.loss = loss
    return task


def training_rate(make_task, model, lr: float, s: Settings, n: int, naive: bool) -> float:
    """Tokens/s of the engine's training steps (stages.train_epoch) over make_task(n)'s n
    batches, after make_task(2)'s 2 batches of warm-up; one model and optimizer throughout.
    Naive: the textbook loss and a for-loop AdamW."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = (torch.optim.AdamW(params, lr=lr, weight_decay=s.optimizer.weight_decay,
                                   foreach=False) if naive
                 else make_optimizer(model, lr, s.optimizer))
    for batches in (2, n):
        task = textbook(make_task(batches)) if naive else make_task(batches)
        _, seconds = train_epoch(0, 1, task, optimizer, s.optimizer, RunControl(),
                                 emit=lambda event: None, progress_events_per_epoch=1)
    return sum(task.batch_tokens) / seconds


def stage1_rate(model, train: Batches, val: Batches, s: Settings, n: int, naive: bool) -> float:
    """Tokens/s of stage-1 steps: the 2-layer model on whole train batches."""
    def task(batches: int) -> StageTask:
        first = Batches(train.x[:batches], train.y[:batches])
        return SequenceTask(model, first, val, Cascade.of([2]))

    return training_rate(task, model, 1e-3, s, n, naive)


def stage2_rate(grown, vocab: int, val: Batches, s: Settings, n: int, naive: bool) -> float:
    """Tokens/s of stage-2 steps: the new layers on 64 hard tokens as length-1 sequences."""
    def task(batches: int) -> StageTask:
        k = 64 * batches
        hard = HardTokens(torch.randn(k, s.model.dim), torch.randint(0, vocab, (k,)),
                          torch.zeros(k), torch.arange(k))
        return HardTokenTask(grown, hard, torch.arange(k), 64, val, Cascade.of([2, 4], [0.5]))

    return training_rate(task, grown, 1e-4, s, 8 * n, naive)


def routed_rate(model, grown, val, vocab: int, s: Settings, n: int, naive: bool) -> float:
    """Tokens/s of the two-exit routed evaluation over validation batches."""
    grown.eval()
    with torch.no_grad():
        shallow = model.hidden(val.x[0], stop=2).reshape(-1, s.model.dim)
        threshold = quantile_threshold(F.softmax(model.head(shallow), -1).max(-1).values, 0.5)
    k = min(n, len(val))
    sub = type(val)(val.x[:k], val.y[:k])
    if naive:
        def routed(_):
            with torch.no_grad():
                for b in range(k):
                    h2 = grown.hidden(sub.x[b], stop=2)
                    h4 = grown.run_layers(h2, 2, 4)
                    l2, l4 = grown.head(h2), grown.head(h4)
                    conf = F.softmax(l2, -1).max(-1).values
                    logits = torch.where((conf >= threshold)[..., None], l2, l4)
                    F.cross_entropy(logits.reshape(-1, vocab), sub.y[b].reshape(-1))
    else:
        def routed(_):
            evaluate(grown, sub, Cascade.of([2, 4], [threshold]))
    return k * val.y[0].numel() / timed(routed, 1, warmup=1)


def bench(corpus, threads: int, n: int, naive: bool) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    s = Settings()
    train, val = corpus.batches["train"], corpus.batches["validation"]
    vocab = len(corpus.vocab)
    model = EarlyExitLM(vocab, 2, s.model)
    stage1 = stage1_rate(model, train, val, s, n, naive)
    grown = model.grow(4)
    grown.freeze_lower(2)
    stage2 = stage2_rate(grown, vocab, val, s, n, naive)
    evaluation = routed_rate(model, grown, val, vocab, s, n, naive)
    return {"threads": threads, "naive": naive, "stage1_train_tok_s": round(stage1),
            "stage2_train_tok_s": round(stage2), "routed_eval_tok_s": round(evaluation)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--threads", type=int, nargs="+", default=[2])
    ap.add_argument("--batches", type=int, default=12)
    ap.add_argument("--naive", action="store_true", help="also time the textbook way")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--sample-s", type=float, default=0.0, metavar="S",
                    help="a machine sampler every S seconds beside the loops (default 0: none)")
    args = ap.parse_args()
    corpus = load_corpus(DataSettings(path=args.data))
    sampler = MachineSampler(args.sample_s)
    sampler.start(lambda event: None)  # samples are made as in a run, then dropped
    sampler.announce("cpu")
    rows = []
    try:
        for threads in args.threads:
            rows.append(bench(corpus, threads, args.batches, naive=False))
            if args.naive:
                rows.append(bench(corpus, threads, args.batches, naive=True))
    finally:
        sampler.stop()
    header = ["threads", "naive", "stage1_train_tok_s", "stage2_train_tok_s",
              "routed_eval_tok_s"]
    print(" | ".join(header))
    for r in rows:
        print(" | ".join(str(r[h]) for h in header))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
