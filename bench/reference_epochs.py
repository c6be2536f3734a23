"""Stage-1 epochs of the default run three ways, back to back in one process, so that the
reference's time and ashem's are measured on the same machine the same hour:

- reference: the reference implementation's arithmetic where its time goes, on ashem's blocks
  (which equal the reference's to the digit, docs/REPRODUCTION.md): materialised logits and
  F.cross_entropy, torch's for-loop AdamW, and validation through the full logits;
- ashem · rows: the engine's epoch (stages.train_epoch, then the task's validation) with the
  head in whole rows of 128 tokens, as before tiles (run.head_tiles = "rows");
- ashem · tiles: the same with the tiles run.head_tiles = "auto" picks on this machine.

    python bench/reference_epochs.py [--data DIR] [--threads 2] [--epochs 1]
        [--ways reference rows tiles] [--precision fp32]

Each line: the way, the epoch, its training and validation seconds and the validation PPL.
Every way starts from the same seeded model. Run it on a quiet machine."""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ashem_engine.cascade import Cascade
from ashem_engine.control import RunControl
from ashem_engine.data import load_corpus
from ashem_engine.head import HeadTiles, Tiles, tiles_in_use
from ashem_engine.memory import keep_freed_memory
from ashem_engine.model import EarlyExitLM
from ashem_engine.precision import compute
from ashem_engine.settings import DataSettings, Settings
from ashem_engine.stages import SequenceTask, make_optimizer, train_epoch
from ashem_engine.tile_probe import resolve
from ashem_engine.tokens import cache_root
from bench_engine import textbook

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw"


@torch.no_grad()
def textbook_validation(model, batches) -> float:
    model.eval()
    nll, count = 0.0, 0
    for x, y in zip(batches.x, batches.y):
        logits = model.head(model.hidden(x, stop=2))
        nll += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1),
                                     reduction="sum"))
        count += y.numel()
    return math.exp(nll / count)


def epochs(way: str, corpus, s: Settings, n: int, tiles: HeadTiles, low: bool) -> None:
    torch.manual_seed(s.run.seed)
    vocab = len(corpus.vocab)
    model = EarlyExitLM(vocab, 2, s.model)
    train, val = corpus.batches["train"], corpus.batches["validation"]
    task = SequenceTask(model, train, val, Cascade.of([2]))
    if way == "reference":
        task = textbook(task)
        optimizer = torch.optim.AdamW(model.parameters(), lr=s.stages[0].lr,
                                      weight_decay=s.optimizer.weight_decay, foreach=False)
    else:
        optimizer = make_optimizer(model, s.stages[0].lr, s.optimizer)
    with compute("bf16" if low else "fp32", torch.device("cpu")), \
            tiles_in_use(None if way == "reference" else tiles):
        for epoch in range(1, n + 1):
            _, train_s = train_epoch(1, epoch, task, optimizer, s.optimizer, RunControl(),
                                     emit=lambda event: None, progress_events_per_epoch=1)
            started = time.perf_counter()
            ppl = textbook_validation(model, val) if way == "reference" else \
                task.validate(lambda: None).ppl
            val_s = time.perf_counter() - started
            print(f"{way:<10} epoch {epoch}: training {train_s:7.1f} s, validation "
                  f"{val_s:5.1f} s, epoch {train_s + val_s:7.1f} s; val PPL {ppl:.2f}",
                  flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--ways", nargs="+", default=["reference", "rows", "tiles"],
                    choices=["reference", "rows", "tiles"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = ap.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    s = Settings()
    corpus = load_corpus(DataSettings(path=args.data))
    low = args.precision == "bf16"
    sizes = (s.data.batch_size * s.data.seq_len, s.data.batch_size)  # as a run's
    for way in args.ways:
        if way == "rows":
            tiles = HeadTiles(Tiles(128), Tiles(128))
        else:
            tiles, source = resolve("auto", torch.device("cpu"), s.model.dim, len(corpus.vocab),
                                    sizes, low, cache_root(s.data))
            if way == "tiles":
                print(f"tiles: step {tiles.step}, statistics {tiles.stats} ({source})")
        epochs(way, corpus, s, args.epochs, tiles, low)


if __name__ == "__main__":
    main()
