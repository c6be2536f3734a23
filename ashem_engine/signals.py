"""A cheaper exit signal: a linear classifier on the exit's hidden state.

Max-softmax runs the whole output head just to decide; the exit classifier reads the same
hidden state with dim MACs: sigmoid(w·h + b), trained to predict the exit's max-softmax
confidence (soft binary cross-entropy) on the mining split. Calibrated by the same quantile
rule, the two route the same fraction of tokens and compare at equal deep ratios."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .dist import World


class ExitClassifier:
    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        self.weight = weight  # (dim,)
        self.bias = bias  # ()

    @torch.no_grad()
    def score(self, h: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(h.reshape(-1, self.weight.shape[0]) @ self.weight + self.bias)

    def state_dict(self) -> dict:
        return {"weight": self.weight.cpu(), "bias": self.bias.cpu()}


def train_exit_classifier(hidden: torch.Tensor, confidence: torch.Tensor, steps: int = 300,
                          lr: float = 0.05, seed: int = 0, world: World = World()
                          ) -> ExitClassifier:
    """Full-batch Adam on (tokens, dim) hidden states, deterministic for a seed; features are
    standardised while training, the scaling folded into w and b. Under torchrun each rank holds
    its share of the tokens; means and gradients summed over the ranks train one classifier."""
    hidden = hidden.detach().reshape(-1, hidden.shape[-1]).float()
    target = confidence.detach().reshape(-1).float()
    mean, std = _standardisation(hidden, world)
    x = (hidden - mean) / std
    generator = torch.Generator().manual_seed(seed)
    w = (torch.randn(x.shape[1], generator=generator) * 0.01).to(x.device).requires_grad_()
    b = torch.zeros((), device=x.device).requires_grad_()
    optimizer = torch.optim.Adam([w, b], lr=lr)
    tokens = world.sum(torch.tensor(float(len(target)), device=x.device))
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            if world.parallel:
                loss = F.binary_cross_entropy_with_logits(x @ w + b, target, reduction="sum")
                (loss / tokens).backward()
                for p in (w, b):
                    world.sum(p.grad)
            else:
                F.binary_cross_entropy_with_logits(x @ w + b, target).backward()
            optimizer.step()
    w, b = w.detach(), b.detach()
    return ExitClassifier(w / std, b - (mean / std) @ w)


def _standardisation(hidden: torch.Tensor, world: World) -> tuple[torch.Tensor, torch.Tensor]:
    """Every feature's mean and (unbiased) standard deviation over every rank's tokens."""
    if not world.parallel:
        return hidden.mean(0), hidden.std(0).clamp_min(1e-6)
    n = world.sum(torch.tensor(float(len(hidden)), dtype=torch.float64, device=hidden.device))
    mean = world.sum(hidden.double().sum(0)) / n
    squares = world.sum(((hidden.double() - mean) ** 2).sum(0))
    return mean.float(), (squares / (n - 1)).sqrt().float().clamp_min(1e-6)
