"""The early-exit Transformer language model, readable top to bottom.

Embedding -> post-norm blocks -> one output head shared by every exit. A block is
`x = norm1(x + attn(x)); x = norm2(x + ffn(x))` with RMSNorm, causal attention with rotary
position embeddings (rotate-half form) and a gated SiLU feed-forward; no biases anywhere,
no final norm, the head untied from the embedding (SPEC_NOTES, "Model").

model.norm = "pre" (for deeper models): `x = x + attn(norm1(x)); x = x + ffn(norm2(x))`, and one
final RMSNorm shared by every exit, belonging to the head (`to_head`); the states passed between
layers stay the raw residual stream. Its MACs (dim per token) are counted nowhere (costs.py)."""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F

from .settings import ModelSettings


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotary_tables(seq_len: int, head_dim: int, base: float, device=None):
    """cos and sin of the rotary angles, (seq_len, head_dim), made once per shape; inside
    torch.compile (run.compile) its graph makes them (Dynamo would warn that it skips the cache)."""
    if torch.compiler.is_compiling():
        return _rotary_tables(seq_len, head_dim, base, device)
    return _cached_rotary_tables(seq_len, head_dim, base, device)


def _rotary_tables(seq_len: int, head_dim: int, base: float, device=None):
    inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32, device=device)
                        / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float32, device=device), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)  # (seq_len, head_dim)
    return angles.cos(), angles.sin()


_cached_rotary_tables = lru_cache(maxsize=None)(_rotary_tables)


def attention(q, k, v, **kwargs) -> torch.Tensor:
    """Scaled dot-product attention. Inside a bf16 run on the CPU it runs in float32: torch's
    bf16 CPU kernel is the slower one here (docs/REPRODUCTION.md), and float32 the safer."""
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **kwargs)
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


class Attention(nn.Module):
    def __init__(self, cfg: ModelSettings):
        super().__init__()
        self.heads = cfg.heads
        self.head_dim = cfg.dim // cfg.heads
        self.rope_base = cfg.rope_base
        self.wq = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.dim, bias=False)
        self.wo = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q = self.wq(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(B, T, self.heads, self.head_dim).transpose(1, 2)
        cos, sin = rotary_tables(T, self.head_dim, self.rope_base, x.device)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        y = attention(q, k, v, is_causal=T > 1)
        return self.wo(y.transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelSettings):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)
        self.w2 = nn.Linear(cfg.ffn_hidden, cfg.dim, bias=False)
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelSettings):
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.attn = Attention(cfg)
        self.norm1 = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = FeedForward(cfg)
        self.norm2 = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.finish(x, self.attn(self.attention_input(x)))

    def attention_input(self, x: torch.Tensor) -> torch.Tensor:
        """What attention's projections read of the block's input x."""
        return self.norm1(x) if self.pre_norm else x

    def finish(self, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        """The block's output from its input x and attention's output (after wo)."""
        if self.pre_norm:
            x = x + attended
            return x + self.ffn(self.norm2(x))
        x = self.norm1(x + attended)
        return self.norm2(x + self.ffn(x))


class EarlyExitLM(nn.Module):
    """A stack of blocks whose hidden state after any layer can go through the shared head."""

    def __init__(self, vocab_size: int, num_layers: int, cfg: ModelSettings):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.embedding = nn.Embedding(vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(num_layers))
        self.head = nn.Linear(cfg.dim, vocab_size, bias=False)
        # pre-norm only: post-norm models keep their state_dict keys
        self.exit_norm = RMSNorm(cfg.dim, cfg.norm_eps) if cfg.norm == "pre" else None
        nn.init.trunc_normal_(self.embedding.weight, std=cfg.embedding_init_std)
        for linear in (m for m in self.layers.modules() if isinstance(m, nn.Linear)):
            nn.init.trunc_normal_(linear.weight, std=cfg.linear_init_std)
        nn.init.trunc_normal_(self.head.weight, std=cfg.linear_init_std)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def hidden(self, x: torch.Tensor, stop: int | None = None) -> torch.Tensor:
        """Token ids (B, T) -> the hidden state after layer `stop` (default: the last)."""
        return self.run_layers(self.embedding(x), 0, self.num_layers if stop is None else stop)

    def run_layers(self, h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        """Hidden state after layer `start` (0 = embedding) -> after layer `stop`."""
        for block in self.layers[start:stop]:
            h = block(h)
        return h

    def to_head(self, h: torch.Tensor) -> torch.Tensor:
        """A hidden state as the output head (and an exit signal) reads it, at any exit: the
        final norm's output in a pre-norm model, h itself in a post-norm one."""
        return h if self.exit_norm is None else self.exit_norm(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Full logits of the last layer (small vocabularies, tests); training uses head.py."""
        return self.head(self.to_head(self.hidden(x)))

    def grow(self, num_layers: int, init: str = "fresh") -> "EarlyExitLM":
        """A deeper model: built whole and freshly initialised (as the reference does, so the
        random stream matches), then the embedding, existing blocks and head (with the final norm of
        a pre-norm model) copied in. init =
        "copy" (depthwise stacking): new block i is a copy of block i mod the blocks before."""
        if num_layers <= self.num_layers:
            raise ValueError(f"cannot grow {self.num_layers} layers to {num_layers}")
        grown = EarlyExitLM(self.vocab_size, num_layers, self.cfg).to(self.head.weight.device)
        grown.load_state_dict(self.state_dict(), strict=False)  # the new blocks' keys missing
        if init == "copy":
            for i in range(self.num_layers, num_layers):
                grown.layers[i].load_state_dict(self.layers[i % self.num_layers].state_dict())
        return grown

    def freeze_lower(self, num_layers: int, freeze_head: bool = False) -> None:
        """Hard freezing: the embedding and the first `num_layers` blocks stop learning; the head
        (and a pre-norm model's final norm, which belongs to it) too with `freeze_head`."""
        for p in [*self.embedding.parameters(), *self.layers[:num_layers].parameters()]:
            p.requires_grad_(False)
        self.head.weight.requires_grad_(not freeze_head)
        if self.exit_norm is not None:
            self.exit_norm.weight.requires_grad_(not freeze_head)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def block_macs_per_token(cfg: ModelSettings, seq_len: int) -> float:
    """Multiply-accumulates of one block per token: projections, causal attention over on
    average (seq_len + 1) / 2 keys (scores and values), and the gated feed-forward."""
    projections = 4 * cfg.dim * cfg.dim
    attention = 2 * cfg.dim * (seq_len + 1) / 2
    ffn = 3 * cfg.dim * cfg.ffn_hidden
    return projections + attention + ffn


def head_macs_per_token(cfg: ModelSettings, vocab_size: int) -> float:
    return float(cfg.dim * vocab_size)

