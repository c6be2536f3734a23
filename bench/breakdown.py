"""Where a run's seconds go: exclusive wall time per part of the pipeline.

`install()` wraps the engine functions that make up each part (training, validation,
mining, the final evaluation, the sweep, data loading, stage set-up, checkpoints and other
files) with timers; a part's seconds exclude the parts timed inside it (a checkpoint written
during training counts as a checkpoint). `Profile.table(total)` prints the breakdown; what no
timer covers (events, the summary, Python around the steps) is "other". The engine itself is
unchanged: the wrappers live in this bench only.
"""
from __future__ import annotations

import functools
import time
from typing import Callable

PARTS = ("training", "validation", "mining", "stage set-up", "evaluation", "sweep",
         "data loading", "checkpoints and files")


class Profile:
    def __init__(self) -> None:
        self.seconds = {part: 0.0 for part in PARTS}
        self._stack: list[list] = []  # [part, started, seconds of inner timed parts]

    def timed(self, part: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            self._stack.append([part, time.perf_counter(), 0.0])
            try:
                return fn(*args, **kwargs)
            finally:
                name, started, inner = self._stack.pop()
                spent = time.perf_counter() - started
                self.seconds[name] += spent - inner
                if self._stack:
                    self._stack[-1][2] += spent
        return wrapper

    def table(self, total: float) -> str:
        rows = [*self.seconds.items(), ("other", total - sum(self.seconds.values()))]
        lines = [f"{'part':<24}{'seconds':>10}{'share':>8}"]
        lines += [f"{part:<24}{s:>10.1f}{s / total:>8.1%}" for part, s in rows]
        return "\n".join([*lines, f"{'whole run':<24}{total:>10.1f}"])


def install() -> Profile:
    from ashem_engine import stages, steps

    profile = Profile()
    patches = [
        (stages, "train_epoch", "training"),
        (stages.StageTask, "validate", "validation"),
        (stages.StageTask, "hard_ppl", "validation"),
        (steps.Pipeline, "mine_and_grow", "mining"),
        (steps.Pipeline, "_task", "stage set-up"),
        (steps.Pipeline, "final_evaluation", "evaluation"),
        (steps.Pipeline, "threshold_sweep", "sweep"),
        (steps.Pipeline, "_load", "data loading"),
        (steps, "atomic_torch_save", "checkpoints and files"),
        (steps, "load_checkpoint", "checkpoints and files"),
        (steps, "atomic_write_json", "checkpoints and files"),
    ]
    for owner, name, part in patches:
        setattr(owner, name, profile.timed(part, getattr(owner, name)))
    return profile
