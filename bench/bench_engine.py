"""Tokens per second of the engine's three hot loops at the spec's full size.

    python bench/bench_engine.py [--data DIR] [--threads 1 2] [--batches 12] [--naive]

- stage-1 training: a 2-layer step on a 64 × 32 train batch (fused head, fused AdamW);
- stage-2 training: a step of the new layers on 64 hard tokens (length-1 sequences);
- routed evaluation: two-exit evaluation over validation batches.
With --naive, the same steps the textbook way (full logits + F.cross_entropy, for-loop AdamW),
which is what the reference implementation does, for comparison. Results go to stdout as a
table and, with --json FILE, as JSON.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ashem_engine.cascade import Cascade, evaluate
from ashem_engine.data import load_corpus
from ashem_engine.head import head_loss
from ashem_engine.model import EarlyExitLM
from ashem_engine.settings import DataSettings, Settings
from ashem_engine.stages import make_optimizer

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw"


def timed(step, n: int, warmup: int = 2) -> float:
    for i in range(warmup):
        step(i)
    start = time.perf_counter()
    for i in range(n):
        step(warmup + i)
    return time.perf_counter() - start


def stage1_rate(model, train, s: Settings, n: int, naive: bool) -> float:
    """Tokens/s of stage-1 steps: the 2-layer model on whole train batches."""
    params = [p for p in model.parameters()]
    if naive:
        opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01, foreach=False)
    else:
        opt = make_optimizer(model, 1e-3, s.optimizer)

    def step(i):
        opt.zero_grad(set_to_none=True)
        b = i % len(train)
        h = model.hidden(train.x[b]).reshape(-1, s.model.dim)
        if naive:
            loss = F.cross_entropy(model.head(h), train.y[b].reshape(-1))
        else:
            loss = head_loss(h, model.head.weight, train.y[b])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    return n * train.y[0].numel() / timed(step, n)


def stage2_rate(grown, vocab: int, s: Settings, n: int, naive: bool) -> float:
    """Tokens/s of stage-2 steps: the new layers on 64 hard tokens as length-1 sequences."""
    p2 = [p for p in grown.parameters() if p.requires_grad]
    opt2 = (torch.optim.AdamW(p2, lr=1e-4, weight_decay=0.01, foreach=False) if naive
            else make_optimizer(grown, 1e-4, s.optimizer))
    hidden = torch.randn(64 * 64, s.model.dim)
    targets = torch.randint(0, vocab, (64 * 64,))

    def step(i):
        opt2.zero_grad(set_to_none=True)
        sl = slice((i % 64) * 64, (i % 64 + 1) * 64)
        out = grown.run_layers(hidden[sl][:, None, :], 2, 4)[:, 0, :]
        if naive:
            loss = F.cross_entropy(grown.head(out), targets[sl])
        else:
            loss = head_loss(out, grown.head.weight, targets[sl])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(p2, 1.0)
        opt2.step()

    n2 = 8 * n
    return n2 * 64 / timed(step, n2)


def routed_rate(model, grown, val, vocab: int, s: Settings, n: int, naive: bool) -> float:
    """Tokens/s of the two-exit routed evaluation over validation batches."""
    grown.eval()
    with torch.no_grad():
        shallow = model.hidden(val.x[0], stop=2).reshape(-1, s.model.dim)
        threshold = torch.quantile(
            F.softmax(model.head(shallow), -1).max(-1).values, 0.5).item()
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
    stage1 = stage1_rate(model, train, s, n, naive)
    grown = model.grow(4)
    grown.freeze_lower(2)
    stage2 = stage2_rate(grown, vocab, s, n, naive)
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
    args = ap.parse_args()
    corpus = load_corpus(DataSettings(path=args.data))
    rows = []
    for threads in args.threads:
        rows.append(bench(corpus, threads, args.batches, naive=False))
        if args.naive:
            rows.append(bench(corpus, threads, args.batches, naive=True))
    header = ["threads", "naive", "stage1_train_tok_s", "stage2_train_tok_s",
              "routed_eval_tok_s"]
    print(" | ".join(header))
    for r in rows:
        print(" | ".join(str(r[h]) for h in header))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
