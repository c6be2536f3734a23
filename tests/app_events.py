"""A realistic ASHEM event sequence for the app tests (no engine needed).

Two stages: stage 1 runs 4 epochs (best epoch 3), stage 2 runs 7 epochs (best epoch 4,
patience 3), numbers in the range of the reference CPU run in SPEC_NOTES. The sequence holds
at the default boundaries (stage-1, mining-1) like a dashboard run would.

    events = make_events()                 # the whole run, RunFinished last
    head = until(events, boundary="mining-1")   # up to and including that Paused event
    write_events(events, tmp_path / "events.jsonl")

`FakeControl` stands in for a run's control, `plain` / `chart_title` read what a widget
shows, and `count_calls` counts calls of a method (how often a panel is redrawn).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Optional

from ashem_engine.events import (
    BatchProgress, EpochEnded, Evaluated, Event, HardExamplesCollected, Log, MachineSampled,
    Paused, Resumed, RunCancelled, RunFailed, RunFinished, RunStarted, StageEnded,
    StageStarted, ThresholdComputed,
)

RUN_DIR = "runs/20250101T120000Z-reference"
SETTINGS = {
    "run": {"name": "reference", "seed": 42, "pause_at": ["stage-1", "mining-1"],
            "runs_dir": "runs"},
    "data": {"corpus": "wikitext-2-raw-v1", "seq_len": 32, "batch_size": 64},
    "stages": [
        {"layers": 2, "max_epochs": 50, "lr": 1e-3, "patience": 1},
        {"layers": 4, "max_epochs": 50, "lr": 1e-4, "patience": 3},
    ],
}

STAGE1 = [  # train ppl, val ppl, val acc
    (3208.8, 1142.06, 0.1451),
    (688.4, 999.25, 0.1595),
    (424.4, 985.59, 0.1617),
    (298.6, 1043.10, 0.1585),
]
STAGE2 = [  # train ppl (hard tokens), val ppl, val acc, hard ppl, shallow ratio
    (2410.5, 915.94, 0.1548, 1870.14, 0.688),
    (1544.2, 820.62, 0.1566, 1291.89, 0.702),
    (1187.9, 787.27, 0.1574, 1041.87, 0.711),
    (1002.3, 776.71, 0.1580, 902.72, 0.717),
    (881.6, 777.95, 0.1579, 807.70, 0.721),
    (790.4, 779.30, 0.1577, 734.87, 0.724),
    (716.8, 781.24, 0.1575, 675.27, 0.726),
]
THRESHOLD = 0.1596
VAL_TOKENS = 65_536


def _histogram(bins: int = 40) -> tuple[list[float], list[int]]:
    edges = [round(i / bins, 4) for i in range(bins + 1)]
    weights = [pow(0.80, i) * (1.6 if 2 <= i <= 6 else 1.0) for i in range(bins)]
    weights[-1] += 0.02  # a few tokens with near-certain predictions
    scale = VAL_TOKENS / sum(weights)
    counts = [int(w * scale) for w in weights]
    counts[0] += VAL_TOKENS - sum(counts)
    return edges, counts


def _fitted_histogram(bins: int = 50, low: float = 0.0021, high: float = 0.5317
                      ) -> tuple[list[float], list[int]]:
    """The same confidences in bins over the range they fill (ThresholdComputed.zoom_*)."""
    width = (high - low) / bins
    edges = [round(low + i * width, 6) for i in range(bins + 1)]
    centres = [low + (i + 0.5) * width for i in range(bins)]
    weights = [pow(0.80, 40 * x) * (1.6 if 0.05 <= x <= 0.175 else 1.0) for x in centres]
    scale = 0.99 * VAL_TOKENS / sum(weights)
    return edges, [int(w * scale) for w in weights]


TOP_WORDS = [["the", 2113], [",", 1877], ["of", 1201], ["and", 1102], ["in", 987],
             ["a", 812], ["to", 766], ["was", 512], ["@-@", 498], ["his", 301],
             ["first", 244], ["game", 198]]
EXAMPLES = [
    {"context": ["the", "game", "was", "released", "in"], "target": "japan",
     "confidence": 0.0412},
    {"context": ["he", "scored", "his", "first", "goal", "for"], "target": "the",
     "confidence": 0.0877},
    {"context": ["valkyria", "chronicles", "iii", "is", "a"], "target": "tactical",
     "confidence": 0.0131},
    {"context": ["the", "storm", "moved", "slowly", "towards", "the"], "target": "coast",
     "confidence": 0.0559},
    {"context": ["it", "was", "the", "second", "single", "from"], "target": "their",
     "confidence": 0.1203},
]


MiB = 2 ** 20


def machine(n: int, stage: Optional[int]) -> MachineSampled:
    """The n-th machine sample (0, 1, ...): resident memory growing to a plateau."""
    rss = (310 + min(n, 4) * 24 + n) * MiB
    return MachineSampled(cpu_percent=196.0 - 7 * (n % 3), rss_bytes=rss,
                          peak_rss_bytes=rss + 6 * MiB, threads=3, system_cpu_percent=99.0,
                          system_memory_percent=41.5, stage=stage)


def make_events(*, stage1_epochs: int = 4, stage2_epochs: int = 7, hold: bool = True,
                batches_per_report: int = 4, fail_at: Optional[str] = None) -> list[Event]:
    """The whole run. `fail_at="stage-2"` ends the log with a RunFailed in stage 2, epoch 2."""
    ev: list[Event] = []
    t = [0.0]

    def add(e: Event, dt: float = 0.0) -> None:
        t[0] = round(t[0] + dt, 3)
        e.t = t[0]
        ev.append(e)

    add(RunStarted(name="reference", run_dir=RUN_DIR, device="cpu", threads=2,
                   settings=SETTINGS, vocab_size=69_830, train_tokens=327_680,
                   val_tokens=VAL_TOKENS, test_tokens=73_728,
                   stages=[{"stage": 1, "layers": 2, "max_epochs": 50},
                           {"stage": 2, "layers": 4, "max_epochs": 50}]))
    add(Log(level="info", message="loaded wikitext-2-raw-v1: vocabulary 69,830 words"), 1.2)
    add(machine(0, None))  # samples at the time of the event before them: the same clock
    add(StageStarted(stage=1, layers=2, trainable_params=4_600_448, total_params=4_600_448,
                     lr=1e-3, patience=1, max_epochs=50, training_tokens=327_680,
                     batches=160), 0.3)
    best = (0, float("inf"), 0.0)
    for e, (tr, va, acc) in enumerate(STAGE1[:stage1_epochs], start=1):
        for k in range(1, batches_per_report + 1):
            b = 160 * k // batches_per_report
            add(BatchProgress(stage=1, epoch=e, batch=b, batches=160,
                              loss=round(8.1 - 0.9 * e - 0.1 * k, 4),
                              tokens_per_s=1630.0 + 7 * k + e,
                              eta_s=round(200.0 * (1 - k / batches_per_report), 1)), 50.0)
        improved = va < best[1]
        if improved:
            best = (e, va, acc)
        add(EpochEnded(stage=1, epoch=e, train_ppl=tr, val_ppl=va, val_acc=acc,
                       improved=improved, patience_counter=0 if improved else 1, patience=1,
                       best_epoch=best[0], best_val_ppl=best[1], seconds=214.6 + e),
            15.0)
        add(machine(e, 1))
    add(StageEnded(stage=1, epochs=stage1_epochs, best_epoch=best[0], best_val_ppl=best[1],
                   best_val_acc=best[2], stopped_early=stage1_epochs < 50, seconds=861.2,
                   checkpoint=f"{RUN_DIR}/stage1.pt"), 0.5)
    if hold:
        add(Paused(where="after stage 1", reason="pause_at", boundary="stage-1"), 0.1)
        add(Resumed(where="after stage 1"), 12.0)
    edges, counts = _histogram()
    zoom_edges, zoom_counts = _fitted_histogram()
    add(ThresholdComputed(stage=1, exit_layer=2, threshold=THRESHOLD, target_ratio=0.5,
                          split="validation", tokens=VAL_TOKENS, histogram_edges=edges,
                          histogram_counts=counts, zoom_edges=zoom_edges,
                          zoom_counts=zoom_counts), 9.8)
    add(HardExamplesCollected(stage=1, count=32_768, total=VAL_TOKENS, ratio=0.5,
                              mean_confidence=0.0653, hard_ppl=2854.97, split="validation",
                              top_words=TOP_WORDS, examples=EXAMPLES), 1.1)
    if hold:
        add(Paused(where="after mining stage 1", reason="pause_at", boundary="mining-1"), 0.1)
        add(Resumed(where="after mining stage 1"), 20.0)
    add(StageStarted(stage=2, layers=4, trainable_params=4_600_448, total_params=9_200_896,
                     lr=1e-4, patience=3, max_epochs=50, training_tokens=32_768, batches=512,
                     context="single-token"), 0.4)
    best = (0, float("inf"), 0.0, None)
    for e, (tr, va, acc, hard, shallow) in enumerate(STAGE2[:stage2_epochs], start=1):
        for k in range(1, batches_per_report + 1):
            b = 512 * k // batches_per_report
            add(BatchProgress(stage=2, epoch=e, batch=b, batches=512,
                              loss=round(7.5 - 0.12 * e - 0.02 * k, 4),
                              tokens_per_s=1480.0 + 5 * k + e,
                              eta_s=round(60.0 * (1 - k / batches_per_report), 1)), 15.0)
            if fail_at == "stage-2" and e == 2 and k == 2:
                add(Log(level="error", message="loss is NaN at stage 2, epoch 2, batch 256"),
                    0.1)
                add(RunFailed(error_kind="numeric",
                              message="training loss became NaN (stage 2, epoch 2, batch 256)",
                              where="stage 2, epoch 2, batch 256", run_dir=RUN_DIR), 0.1)
                return ev
        improved = va < best[1]
        if improved:
            best = (e, va, acc, hard)
        counter = 0 if improved else e - best[0]
        add(EpochEnded(stage=2, epoch=e, train_ppl=tr, val_ppl=va, val_acc=acc,
                       improved=improved, patience_counter=counter, patience=3,
                       best_epoch=best[0], best_val_ppl=best[1], seconds=133.0 + e,
                       hard_ppl=hard, shallow_ratio=shallow), 73.0)
        add(machine(stage1_epochs + e, 2))
    add(StageEnded(stage=2, epochs=stage2_epochs, best_epoch=best[0], best_val_ppl=best[1],
                   best_val_acc=best[2], stopped_early=stage2_epochs < 50, seconds=933.4,
                   checkpoint=f"{RUN_DIR}/stage2.pt", best_hard_ppl=best[3]), 0.5)
    add(Evaluated(split="validation", tokens=VAL_TOKENS, accuracy=0.1580, ppl=776.71,
                  exit_layers=[2, 4], exit_ratios=[0.726, 0.274], shallow_ratio=0.726,
                  deep_ratio=0.274, compute_cost=0.6372, honest_cost=1.2341,
                  thresholds=[THRESHOLD]), 14.7)
    add(RunFinished(run_dir=RUN_DIR, seconds=round(t[0] + 0.2, 3),
                    summary={"val_ppl": 776.71, "val_acc": 0.1580, "compute_cost": 0.6372}),
        0.2)
    return ev


def until(events: list[Event], *, boundary: Optional[str] = None,
          kind: Optional[str] = None, predicate: Optional[Callable[[Event], bool]] = None,
          ) -> list[Event]:
    """The events up to and including the first that matches."""
    def match(e: Event) -> bool:
        if boundary is not None:
            return isinstance(e, Paused) and e.boundary == boundary
        if kind is not None:
            return e.kind == kind
        return bool(predicate and predicate(e))

    for i, e in enumerate(events):
        if match(e):
            return events[: i + 1]
    raise ValueError("no matching event")


def cancelled_after(events: list[Event]) -> list[Event]:
    last = events[-1].t
    return [*events, RunCancelled(run_dir=RUN_DIR, where="stage 2, epoch 3, batch 128",
                                  seconds=last + 0.4, t=last + 0.4)]


def write_events(events: Iterable[Event], path: str | Path, torn_tail: str = "") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for e in events:
            f.write(json.dumps(e.to_dict()) + "\n")
        f.write(torn_tail)
    return path


class FakeControl:
    """Stands in for RunControl in UI tests: records calls, blocks nothing."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.paused = False
        self.cancelled = False

    def pause(self) -> None:
        self.calls.append("pause")
        self.paused = True

    def resume(self) -> None:
        self.calls.append("resume")
        self.paused = False

    def cancel(self) -> None:
        self.calls.append("cancel")
        self.cancelled = True


def plain(widget) -> str:
    """The text a Static-like widget shows (str, rich Text or any rich renderable)."""
    import io

    from rich.console import Console
    from rich.text import Text

    content = getattr(widget, "content", None)
    if isinstance(content, Text):
        return content.plain
    if isinstance(content, str):
        return content
    console = Console(width=200, file=io.StringIO(), record=True, color_system=None)
    console.print(content)
    return console.export_text()


def chart_title(chart) -> str:
    """The first line a plotext chart shows (its title), as a person reads it."""
    return chart.render().plain.split("\n")[0].strip()


def count_calls(monkeypatch, cls: type, name: str) -> list:
    """Counts calls of `cls.name` (a list of the instances called) while a test runs."""
    calls: list = []
    original = getattr(cls, name)

    def spy(self, *args, **kwargs):
        calls.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, spy)
    return calls
