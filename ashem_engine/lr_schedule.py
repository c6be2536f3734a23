"""The learning rate of each optimizer step of a stage ([optimizer] schedule, warmup_steps,
decay_epochs, min_lr_ratio). A step's rate follows from its index in the stage alone, so a
resumed run (which repeats the epoch it stopped in) sets the very rates of a run straight
through. The defaults (constant, no warm-up) leave the optimizer's rate untouched."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

from .settings import OptimizerSettings


@dataclass(frozen=True)
class LrSchedule:
    lr: float  # the stage's rate (stages.N.lr)
    kind: str  # "constant" or "cosine"
    warmup_steps: int
    decay_steps: int  # the cosine's horizon: it reaches its floor after this many steps
    min_lr_ratio: float  # the cosine's floor, as a fraction of lr
    steps_per_epoch: int

    @classmethod
    def of_stage(cls, lr: float, opt: OptimizerSettings, max_epochs: int,
                 steps_per_epoch: int) -> "LrSchedule":
        epochs = opt.decay_epochs or max_epochs
        return cls(lr, opt.schedule, opt.warmup_steps, epochs * steps_per_epoch, opt.min_lr_ratio,
                   steps_per_epoch)

    @property
    def constant(self) -> bool:
        """Every step at lr: the optimizer's own rate is left as it is."""
        return self.kind == "constant" and self.warmup_steps == 0

    def at(self, step: int) -> float:
        """The rate of the stage's optimizer step `step` (0-based, counted over its epochs):
        linear warm-up lr × (step + 1) / warmup_steps over the first warmup_steps steps, then
        lr (constant), or a cosine from lr at the warm-up's end down to min_lr_ratio × lr at
        decay_steps, and that floor after it (cosine)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.lr
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.decay_steps -
                                                             self.warmup_steps))
        floor = self.min_lr_ratio
        return self.lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))

    def in_epoch(self, epoch: int) -> Optional[Callable[[int], float]]:
        """The rate of epoch `epoch`'s (from 1) step for its batch b; None when constant."""
        if self.constant:
            return None
        first = (epoch - 1) * self.steps_per_epoch
        return lambda b: self.at(first + b)

    def epoch_lr(self, epoch: int, steps_taken: int) -> float:
        """The rate of the epoch's last step (of its first, if it took none)."""
        return self.at((epoch - 1) * self.steps_per_epoch + max(steps_taken, 1) - 1)
