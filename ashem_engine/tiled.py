"""The head over tiles of tokens × words, so that a block's logits stay in L2.

A row's softmax needs its sum over every word, which no block sees: the first pass keeps each
block's row sums of exp(logit) (no max shift, as the bf16 path in head.py: exp is exact in
relative terms at any magnitude) and each block's logit at a row's target offset; their totals
give the log-sum-exp, the NLL and, with each block's maxima, the confidence. A row whose total
overflows or underflows float32 is done again with its largest logit subtracted. The
gradients take a second pass: d loss / d logits = exp(logit) / (n · total) − onehot / n, whose
scale is per token, so it multiplies h's rows (for W's gradient) and the accumulated rows of
exp · W (for h's), and the onehot terms are W's and h's target rows. A frozen head needs no
second pass: h's gradient accumulates in the first. Products and exponentials are in the
compute dtype (bf16 in a bf16 run), sums and every figure float32."""
from __future__ import annotations

import torch

SAFE_LOW = 1e-30  # a total below this lost terms to float32's subnormal range


class _Blocks:
    """The blocks of a pass: the vocabulary in `words` columns outer, tokens inner."""

    def __init__(self, h, w, targets, tiles):
        self.h, self.w, self.n, self.vocab = h, w, h.shape[0], w.shape[0]
        self.tokens, self.words = min(tiles.tokens, max(self.n, 1)), tiles.words
        self.count = -(-self.vocab // self.words)
        offset = (targets % self.words)[:, None]  # the target's column in its block
        self.offsets = [offset] * (self.count - 1) + \
            [offset.clamp(max=self.vocab - (self.count - 1) * self.words - 1)]
        self.buffer = torch.empty(self.tokens * min(self.words, self.vocab), dtype=h.dtype,
                                  device=h.device)

    def __iter__(self):
        """(block, word rows of W, token slice, the block's logits) for every block."""
        for b in range(self.count):
            wb = self.w[b * self.words:(b + 1) * self.words]
            for t0 in range(0, self.n, self.tokens):
                rows = slice(t0, min(t0 + self.tokens, self.n))
                logits = self.buffer[:(rows.stop - t0) * wb.shape[0]].view(-1, wb.shape[0])
                torch.mm(self.h[rows], wb.t(), out=logits)
                yield b, wb, rows, logits


def _exponentials(logits, shift, rows):
    if isinstance(shift, torch.Tensor):
        logits.sub_(shift[rows, None].to(logits.dtype))
    return logits.exp_()


def _first_pass(blocks: _Blocks, targets, shift, maxima: bool, grad_rows):
    """Per token: the total of exp(logit - shift), the target's logit, and with `maxima` each
    block's largest logit; `grad_rows` accumulates exp · W."""
    n, device = blocks.n, blocks.h.device
    sums = torch.empty(blocks.count, n, device=device)
    target_logits = torch.empty(blocks.count, n, dtype=blocks.h.dtype, device=device)
    tops = torch.empty(blocks.count, n, dtype=blocks.h.dtype, device=device) if maxima else None
    for b, wb, rows, logits in blocks:
        torch.gather(logits, 1, blocks.offsets[b][rows], out=target_logits[b, rows, None])
        if maxima:
            torch.amax(logits, 1, out=tops[b, rows])
        torch.sum(_exponentials(logits, shift, rows), 1, dtype=torch.float32, out=sums[b, rows])
        if grad_rows is not None:
            _accumulate(grad_rows[rows], logits, wb)
    block_of_target = (targets // blocks.words)[None]
    target_logit = target_logits.gather(0, block_of_target).squeeze(0).float()
    return sums.sum(0), target_logit, tops


def _accumulate(into: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """into += a @ b, in float32 `into` whatever a's and b's dtype."""
    if a.dtype == into.dtype:
        into.addmm_(a, b)
    else:
        into.add_(torch.mm(a, b))


def _safe_pass(blocks, targets, maxima=False, grad_rows=None):
    """The first pass, again with each row's largest logit subtracted where a total left
    float32's normal range. Returns log(total), the target's logit, the block maxima (float32)
    and the shift (0.0 or each row's): the log-sum-exp is log(total) + shift."""
    sums, target_logit, tops = _first_pass(blocks, targets, None, maxima, grad_rows)
    if bool(torch.isfinite(sums).all()) and bool((sums > SAFE_LOW).all()):
        return sums.log(), target_logit, None if tops is None else tops.float(), 0.0
    shift = torch.full((blocks.n,), -torch.inf, device=blocks.h.device)
    for _, _, rows, logits in blocks:
        shift[rows] = torch.maximum(shift[rows], logits.amax(1).float())
    shift = shift.to(blocks.h.dtype).float()  # as the blocks subtract it (bf16: rounded)
    if grad_rows is not None:
        grad_rows.zero_()
    sums, target_logit, tops = _first_pass(blocks, targets, shift, maxima, grad_rows)
    return sums.log(), target_logit, None if tops is None else tops.float(), shift


def loss_and_gradients(h, w, targets, tiles, low: bool, want_h: bool, want_w: bool):
    """Per-token NLL (float32) and d mean NLL / d h, d W (None where not wanted)."""
    dtype = torch.bfloat16 if low else h.dtype
    n = h.shape[0]
    blocks = _Blocks(h.to(dtype), w.to(dtype), targets, tiles)
    one_pass = want_h and not want_w  # a frozen head: h's gradient from the first pass
    grad_rows = torch.zeros(n, h.shape[1], device=h.device) if want_h else None
    log_total, target_logit, _, shift = _safe_pass(blocks, targets,
                                                   grad_rows=grad_rows if one_pass else None)
    nll = log_total - (target_logit - shift)
    if not (want_h or want_w):
        return nll, None, None
    scale = torch.exp(-log_total) / n  # 1 / (n · total)
    grad_w = None if one_pass else _second_pass(blocks, h, scale, shift, grad_rows, want_w)
    grad_h = None
    if want_h:
        grad_h = grad_rows.mul_(scale[:, None]).sub_(w[targets].float(), alpha=1.0 / n)
        grad_h = grad_h.to(h.dtype)
    if grad_w is not None:
        grad_w.index_add_(0, targets, h.float(), alpha=-1.0 / n)
        grad_w = grad_w.to(w.dtype)
    return nll, grad_h, grad_w


def _second_pass(blocks, h, scale, shift, grad_rows, want_w):
    """exp · W into `grad_rows` (if given) and W's gradient without its onehot term."""
    grad_w = torch.zeros(blocks.vocab, h.shape[1], device=h.device) if want_w else None
    scaled_h = (h.float() * scale[:, None]).to(blocks.h.dtype) if want_w else None
    for b, wb, rows, logits in blocks:
        p = _exponentials(logits, shift, rows)
        if grad_rows is not None:
            _accumulate(grad_rows[rows], p, wb)
        if want_w:
            _accumulate(grad_w[b * blocks.words:b * blocks.words + wb.shape[0]], p.t(),
                        scaled_h[rows])
    return grad_w


def statistics(h, w, targets, tiles, low: bool):
    """(NLL, confidence, correct) per token, as head.exit_stats gives them."""
    dtype = torch.bfloat16 if low else h.dtype
    blocks = _Blocks(h.to(dtype), w.to(dtype), targets, tiles)
    if blocks.n == 0:
        empty = torch.empty(0, device=h.device)
        return empty, empty.clone(), torch.empty(0, dtype=torch.bool, device=h.device)
    log_total, target_logit, tops, shift = _safe_pass(blocks, targets, maxima=True)
    top = tops.amax(0)
    confidence = torch.exp((top - shift) - log_total)
    correct = _correct(blocks, targets, target_logit, top, tops)
    return log_total - (target_logit - shift), confidence, correct


def _correct(blocks, targets, target_logit, top, tops) -> torch.Tensor:
    """argmax == target, as argmax breaks ties (the first index): the target holds the
    maximum and no earlier block does; then no earlier word of its block may reach it, which
    these rows' logits over their block's words before the target, made again, settle (a
    block's count of its maximum would cost a pass as long as the exponentials')."""
    first_block = (tops == top[None]).int().argmax(0)
    target_block = targets // blocks.words
    correct = (target_logit == top) & (first_block == target_block)
    rows = correct.nonzero().squeeze(1)
    rows = rows[torch.argsort(target_block[rows], stable=True)]
    blocks_of_rows, counts = torch.unique_consecutive(target_block[rows], return_counts=True)
    start = 0
    for block, count in zip(blocks_of_rows.tolist(), counts.tolist()):
        these = rows[start:start + count]
        start += count
        wb = blocks.w[block * blocks.words:(block + 1) * blocks.words]
        logits = blocks.h[these] @ wb.t()
        offset = (targets[these] - block * blocks.words)[:, None]
        earlier = torch.arange(wb.shape[0], device=logits.device)[None] < offset
        correct[these] = ~((logits >= logits.gather(1, offset)) & earlier).any(1)
    return correct
