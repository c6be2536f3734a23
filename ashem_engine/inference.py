"""The real early exit: upper layers and heads run only for the tokens that go deep.

route_everything (routing.py) runs every block for every token and decides afterwards; this
module computes only what the decision needs, and gives the same exits and hidden states:
- TOKEN mode (as trained in the token context): the deep tokens' states are gathered and run
  through the upper layers as sequences of length 1.
- PROPAGATED mode (sequence context): an exited token keeps its exit state in the layers
  above; each upper layer projects it to keys and values (so later deep tokens can attend to
  it) but runs no query, attention or feed-forward for it. Deep tokens run the whole block.
- SEQUENCE mode (the spec's evaluation): deep tokens attend to the exited tokens' real
  upper-layer keys and values, so every token runs the upper blocks; only heads are saved.
A token that exits by max-softmax has paid one head per exit it passed; with the exit
classifier it pays one head, at its exit.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .costs import PROPAGATED, SEQUENCE, TOKEN
from .head import exit_stats
from .model import Block, EarlyExitLM, rotate_half
from .routing import RoutedTokens, exits_here


def sparse_block(block: Block, state: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """One block for the active tokens only. state (B, T, dim); active (B, T) bool. Keys
    and values come from every position's state; queries, attention and the feed-forward
    run for the active positions (padded per row to the longest row)."""
    B, T, C = state.shape
    attn = block.attn
    H, D = attn.heads, attn.head_dim
    per_row = active.sum(1)
    M = int(per_row.max()) if B else 0
    if M == 0:
        return state
    # positions of each row's active tokens, padded with position 0 (masked out below)
    order = torch.argsort((~active).to(torch.int8), dim=1, stable=True)[:, :M]
    valid = torch.arange(M, device=state.device)[None, :] < per_row[:, None]
    pos = torch.where(valid, order, torch.zeros_like(order))
    rows = torch.arange(B, device=state.device)[:, None]
    x = state[rows, pos]  # (B, M, C)
    cos, sin = attn._rope(T, state.device)
    k = attn.wk(state).view(B, T, H, D).transpose(1, 2)
    v = attn.wv(state).view(B, T, H, D).transpose(1, 2)
    k = k * cos + rotate_half(k) * sin
    q = attn.wq(x).view(B, M, H, D).transpose(1, 2)
    qc, qs = cos[pos][:, None], sin[pos][:, None]  # (B, 1, M, D)
    q = q * qc + rotate_half(q) * qs
    allowed = torch.arange(T, device=state.device)[None, None, :] <= pos[:, :, None]
    y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None])
    x = block.norm1(x + attn.wo(y.transpose(1, 2).reshape(B, M, C)))
    x = block.norm2(x + block.ffn(x))
    out = state.clone()
    out[rows.expand(B, M)[valid], pos[valid]] = x[valid]
    return out


@torch.no_grad()
def early_exit(model: EarlyExitLM, x: torch.Tensor, y: torch.Tensor,
               exit_layers: Sequence[int], thresholds: Sequence[float], modes: Sequence[str],
               classifiers: Optional[Sequence] = None) -> RoutedTokens:
    """One batch (B, T) of token ids through the routed model, computing only what is needed.
    Same result as routing.route_everything (tested)."""
    weight = model.head.weight
    B, T = x.shape
    y = y.reshape(-1)
    n, last = B * T, len(exit_layers) - 1
    state = model.hidden(x, stop=exit_layers[0])
    C = state.shape[-1]
    nll = torch.empty(n, device=x.device)
    hit = torch.empty(n, dtype=torch.bool, device=x.device)
    exit_index = torch.full((n,), last, dtype=torch.long, device=x.device)
    out = torch.empty(n, C, device=x.device)
    undecided = torch.arange(n, device=x.device)
    for e, layer in enumerate(exit_layers):
        if e > 0:
            start, mode = exit_layers[e - 1], modes[e - 1]
            if mode == TOKEN:
                deep = state.reshape(n, C)[undecided][:, None, :]
                deep = model.run_layers(deep, start, layer)[:, 0, :]
                state = state.reshape(n, C).index_copy(0, undecided, deep).view(B, T, C)
            elif mode == PROPAGATED:
                active = torch.zeros(n, dtype=torch.bool, device=x.device)
                active[undecided] = True
                for block in model.layers[start:layer]:
                    state = sparse_block(block, state, active.view(B, T))
            elif mode == SEQUENCE:
                state = model.run_layers(state, start, layer)
            else:
                raise ValueError(f"unknown inference mode {mode!r}")
        flat = state.reshape(n, C)[undecided]
        targets = y[undecided]
        if e == last:
            s, leave = exit_stats(flat, weight, targets), None
        elif classifiers:
            leave = exits_here(classifiers[e].score(flat), thresholds[e])
            s = exit_stats(flat[leave], weight, targets[leave])  # heads for leavers only
        else:
            s = exit_stats(flat, weight, targets)
            leave = exits_here(s.confidence, thresholds[e])
            s = type(s)(s.nll[leave], s.confidence[leave], s.correct[leave])
        idx = undecided if leave is None else undecided[leave]
        nll[idx], hit[idx] = s.nll, s.correct
        out[idx] = flat if leave is None else flat[leave]
        exit_index[idx] = e
        if leave is not None:
            undecided = undecided[~leave]
    return RoutedTokens(exit_index, nll, hit, out)
