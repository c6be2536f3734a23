"""The fused head alone: one 2,048-token training step (loss and both gradients) and one
statistics pass, fp32 against bf16, at the spec's sizes (dim 64, 69,830 words).

    python bench/bench_head.py [--threads 2] [--repeats 4]

Prints milliseconds per call (mean of the repeats after one warm-up) and how far bf16 lands
from fp32 (relative error of the loss and gradients, largest NLL and confidence gaps).
"""
from __future__ import annotations

import argparse
import time

import torch

from ashem_engine.head import exit_stats, head_loss
from ashem_engine.memory import keep_freed_memory

N, DIM, VOCAB = 2048, 64, 69830


def timed(fn, repeats: int):
    fn()
    started = time.perf_counter()
    for _ in range(repeats):
        out = fn()
    return (time.perf_counter() - started) / repeats * 1000, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as a run does
    torch.manual_seed(0)
    h, w = torch.randn(N, DIM), torch.randn(VOCAB, DIM) * 0.125
    y = torch.randint(0, VOCAB, (N,))

    def step(low: bool):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low, cache_enabled=False):
            loss = head_loss(hh, ww, y)
        loss.backward()
        return loss.item(), hh.grad, ww.grad

    def stats(low: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=low, cache_enabled=False):
            return exit_stats(h, w, y)

    (ms32, (l32, h32, w32)), (ms16, (l16, h16, w16)) = (timed(lambda: step(lo), args.repeats)
                                                        for lo in (False, True))
    print(f"training step: fp32 {ms32:.0f} ms, bf16 {ms16:.0f} ms ({ms32 / ms16:.1f}x); bf16 "
          f"loss {abs(l16 - l32) / l32:.1e}, grad h {float((h16 - h32).norm() / h32.norm()):.1e},"
          f" grad W {float((w16 - w32).norm() / w32.norm()):.1e} relative")
    (ms32, s32), (ms16, s16) = (timed(lambda: stats(lo), args.repeats) for lo in (False, True))
    print(f"statistics: fp32 {ms32:.0f} ms, bf16 {ms16:.0f} ms ({ms32 / ms16:.1f}x); bf16 NLL "
          f"{float((s16.nll - s32.nll).abs().max()):.1e}, confidence "
          f"{float((s16.confidence - s32.confidence).abs().max()):.1e} at most, correctness "
          f"{float((s16.correct == s32.correct).float().mean()):.4f} the same")


if __name__ == "__main__":
    main()
