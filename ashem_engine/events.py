"""Events: everything the engine reports, as plain JSON-serialisable dataclasses, handed to
sinks (sinks.py: the run directory's events.jsonl, the summary, progress lines, the app)."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional

# Fields that depend on the clock, not on the computation (runs compare equal without them).
TIMING_FIELDS = frozenset({"t", "seconds", "elapsed", "tokens_per_s", "eta_s", "stage_seconds",
                           "seconds_before", "run_seconds"})
# Fields that describe the host (RunStarted, RunFinished.summary, summary.json): two hosts of
# the same CPU model and torch build compute the same figures but describe themselves apart.
# "memory": the peaks a stage or an epoch reached (EpochEnded, StageEnded, summary.json).
MACHINE_FIELDS = frozenset({"machine", "memory"})
# Events that only describe the host's load, sampled on a clock (machine.py): how many there
# are depends on time, so runs are compared without them.
MACHINE_EVENTS = frozenset({"MachineSampled"})


@dataclass
class Event:
    """Base class. `t` is seconds since the run started (set by the emitter)."""
    t: float = field(default=0.0, kw_only=True)

    @property
    def kind(self) -> str:
        return type(self).__name__

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass
class RunStarted(Event):
    name: str
    run_dir: str
    device: str
    threads: int
    settings: dict
    vocab_size: int
    train_tokens: int  # tokens in the train batches
    val_tokens: int  # tokens in the validation batches
    test_tokens: int
    stages: list  # one dict per stage: {"stage", "layers", "max_epochs"}
    resumed: bool = False
    machine: Optional[dict] = None  # platform, processor, cpus, torch and python versions
    data_source: str = ""
    seconds_before: float = 0.0  # run time spent before this resume
    resume_point: Optional[dict] = None  # where it goes on: {"stage", "epoch", "stage_done"}
    world_size: int = 1  # processes training together (torchrun), each on its share
    backend: str = "none"  # torch.distributed's backend: gloo (CPU), nccl (CUDA), or none
    precision: str = "fp32"  # run.precision
    plan: list = field(default_factory=list)  # plan.Step dicts in order; [] in older logs
    # run.head_tiles as resolved: {"step", "stats": "TOKENSxWORDS" | "Nxall", "source"}
    head_tiles: Optional[dict] = None


@dataclass
class StageStarted(Event):
    stage: int  # 1-based
    layers: int
    trainable_params: int
    total_params: int
    lr: float
    patience: int
    max_epochs: int
    training_tokens: int
    batches: int  # training batches per epoch
    context: str = "sequence"  # "sequence" (stage 1) or the mode of the new layers
    # A later stage's ablation keys (None in stage 1, and in logs written before them):
    tokens: Optional[str] = None  # "hard" (the mined tokens) or "all"
    trainable: Optional[str] = None  # "new" (the new layers) or "all" (the whole model)
    init: Optional[str] = None  # "fresh" or "copy" (the new layers copy the trained ones)
    freeze_head: Optional[bool] = None
    # The most any process keeps for the stage's steps (hidden states, token ids; under
    # torchrun its share), in bytes; None in logs written before it
    held_bytes: Optional[int] = None
    # A joint run's (joint.enabled) exit layers, every one trained at once; None otherwise
    exits: Optional[list] = None

    def scope(self) -> str:
        """What a later stage trains, in words ("" in stage 1 and in older logs)."""
        if self.tokens is None:
            return ""
        what = "the new layers" if self.trainable == "new" else "the whole model"
        head = "head frozen" if self.freeze_head else "head trained"
        start = "copied from the trained layers" if self.init == "copy" else "fresh"
        return f"trains {what} on {self.tokens} tokens; new layers {start}; {head}"


@dataclass
class BatchProgress(Event):
    stage: int
    epoch: int
    batch: int  # 1-based index of the batch just finished
    batches: int
    loss: float  # running mean training loss over the epoch so far
    tokens_per_s: float
    eta_s: float  # estimated seconds left in this epoch's training batches


@dataclass
class EpochEnded(Event):
    stage: int
    epoch: int
    train_ppl: float
    val_ppl: float
    val_acc: float  # fraction in [0, 1]
    improved: bool
    patience_counter: int
    patience: int
    best_epoch: int
    best_val_ppl: float
    seconds: float
    hard_ppl: Optional[float] = None  # stages >= 2 (and stage 1 after mining)
    shallow_ratio: Optional[float] = None  # when validation is routed
    # MACs (docs/REPRODUCTION.md; None in older logs): the steps' forward and backward (in the
    # first epoch with what the stage computes once for them); validation's and hard PPL's forward.
    training_macs: Optional[float] = None
    selection_macs: Optional[float] = None
    # The run so far, this epoch included, over every stage and attempt (None in older logs):
    # what a chart against compute puts on its x-axis.
    tokens_trained: Optional[int] = None  # target tokens the training steps were given
    run_training_macs: Optional[float] = None  # the sum of training_macs so far
    run_seconds: Optional[float] = None  # the run clock at this epoch's end (a timing field)
    # The epoch's peaks (a machine field): {"peak_rss_bytes", and on CUDA
    # "peak_allocated_bytes", "peak_reserved_bytes"}; None in older logs
    memory: Optional[dict] = None
    # A joint run's validation PPL at each exit (StageStarted.exits); val_ppl is exp of their
    # mean NLL weighted as the loss weighs them (joint.weights). None in other runs
    exit_val_ppls: Optional[list] = None
    # The learning rate of the epoch's last step ([optimizer] schedule; in an epoch of no step,
    # of its first); None in older logs
    lr: Optional[float] = None


@dataclass
class StageEnded(Event):
    stage: int
    epochs: int  # epochs run
    best_epoch: int
    best_val_ppl: float
    best_val_acc: float
    stopped_early: bool
    seconds: float
    checkpoint: str
    best_hard_ppl: Optional[float] = None
    training_macs: Optional[float] = None  # the sum of its epochs' (EpochEnded)
    selection_macs: Optional[float] = None
    memory: Optional[dict] = None  # the stage's peaks, as EpochEnded.memory
    # The run directory whose stage 1 this run took instead of training it (share.py: same
    # stage-1 settings; its events replayed); None: trained here, and in older logs
    shared_from: Optional[str] = None
    # Why it stopped: "patience" (early stopping), "max_epochs", or "budget" (the run's
    # training MACs reached run.training_macs_budget); None in older logs
    stopped_by: Optional[str] = None


@dataclass
class ThresholdComputed(Event):
    stage: int  # the stage whose exit was measured
    exit_layer: int
    threshold: float
    target_ratio: float
    split: str
    tokens: int
    histogram_edges: list  # len(counts) + 1 edges over [0, 1]
    histogram_counts: list
    # the same number of bins over the range the confidences fill (their 0.5 to 99.5 %
    # quantiles, widened to include the threshold); None in logs written before them
    zoom_edges: Optional[list] = None
    zoom_counts: Optional[list] = None
    steered: bool = False  # computed again, at a ratio set while the run held here
    # the same range in bins of equal width in log10, for a log axis; None where the range
    # reaches 0 (a score that is not a probability) and in logs written before them
    log_edges: Optional[list] = None
    log_counts: Optional[list] = None


@dataclass
class HardExamplesCollected(Event):
    stage: int  # the stage whose exit was measured
    count: int
    total: int
    ratio: float  # count / total (the real token total)
    mean_confidence: float
    hard_ppl: float  # this stage's PPL on the hard tokens
    split: str
    top_words: list  # [[target word, count], ...] most frequent hard targets
    examples: list  # [{"context": [words], "target": word, "confidence": c}, ...]
    selection_macs: Optional[float] = None  # the mining pass' forward MACs (once, if steered)
    # The part of selection_macs whose result the next stage trains on: in the token context
    # the blocks that made its stored hidden states; 0 in the sequence context, whose own pass
    # makes them (charged in its EpochEnded.training_macs). None in older logs.
    state_macs: Optional[float] = None


@dataclass
class Evaluated(Event):
    split: str
    tokens: int
    accuracy: float
    ppl: float
    exit_layers: list  # e.g. [2, 4]
    exit_ratios: list  # fraction of tokens leaving at each exit
    shallow_ratio: float
    deep_ratio: float
    compute_cost: float  # the spec's formula: blocks only, relative to the deepest model
    honest_cost: float  # blocks with attention + every head evaluation, relative likewise
    thresholds: list
    macs_per_token: Optional[float] = None
    inference_modes: Optional[list] = None  # of the layers after each exit but the last


@dataclass
class SweepComputed(Event):
    """Quality against honest cost over a range of exit thresholds, after the final report.

    `series`: [{"name", "kind": "sweep" | "baseline", "signal": str | None,
    "points": [point, ...]}]; a point: {"quantile", "thresholds", "ppl", "accuracy",
    "exit_ratios", "deep_ratio", "spec_cost", "honest_cost", "macs_per_token", "pareto"}.
    honest_cost is relative to `plain_macs_per_token`, this run's plain deepest model."""
    split: str
    tokens: int
    plain_macs_per_token: float
    series: list


@dataclass
class Paused(Event):
    where: str  # e.g. "stage 1, epoch 2, batch 40/160" or a boundary name
    reason: str  # "user" or "pause_at"
    boundary: Optional[str] = None  # e.g. "stage-1", "mining-1" when reason == "pause_at"


@dataclass
class Resumed(Event):
    where: str


@dataclass
class CommandObeyed(Event):
    """A command the engine carried out: from the run directory's commands.jsonl (`seq`, its
    place in the log; `id` and the `writer` that wrote it) or an older dashboard's control.json
    (`seq` that file's, `id` "control.json#<seq>"), or, for steering, from the app's own
    process (seq None, id "")."""
    command: str  # "pause", "resume", "continue", "abort" or "set_hard_ratio"
    where: str  # where the run was when it took the command
    seq: Optional[int] = None
    value: Optional[float] = None  # set_hard_ratio's ratio
    writer: str = ""
    id: str = ""  # the writer's id of the command (commands.jsonl); "" in older logs


@dataclass
class CommandIgnored(Event):
    """A warning: a command (or a command file, a line of the command log) that was not
    obeyed, and why."""
    reason: str  # one line, e.g. "the run is not held at a mining transition"
    where: str
    command: Optional[str] = None
    seq: Optional[int] = None
    id: str = ""  # as CommandObeyed.id, where the command had one


@dataclass
class SettingChanged(Event):
    """A setting changed while the run held (settings.json was rewritten with it), e.g.
    key "stages.2.hard_ratio" after the mining transition before stage 2 was steered."""
    key: str
    value: Any
    previous: Any = None


@dataclass
class MachineSampled(Event):
    """The machine as the run uses it, every run.machine_sample_s seconds, sampled off the
    training thread (machine.py); under torchrun, rank 0's process."""
    cpu_percent: float  # this process since the last sample; 100 = one core busy
    rss_bytes: int  # resident memory now
    peak_rss_bytes: int  # the most resident memory this process has held so far
    threads: int  # this process's threads
    system_cpu_percent: Optional[float] = None  # the whole machine; 100 = every core busy
    system_memory_percent: Optional[float] = None  # of the machine's memory, in use
    # One dict per CUDA device: {"index", "allocated_bytes", "reserved_bytes",
    # "peak_allocated_bytes", and where NVML is installed "utilization" (%) and "power_w"}
    devices: list = field(default_factory=list)
    stage: Optional[int] = None  # the stage training when sampled (None between stages)


@dataclass
class Log(Event):
    level: str  # "info", "warning", "error"
    message: str


@dataclass
class RunFinished(Event):
    run_dir: str
    seconds: float
    summary: dict


@dataclass
class RunCancelled(Event):
    run_dir: str
    where: str
    seconds: float


@dataclass
class RunFailed(Event):
    error_kind: str  # "data", "settings", "numeric", "internal", ...
    message: str
    where: str
    run_dir: str = ""


EVENT_TYPES: dict[str, type[Event]] = {cls.__name__: cls for cls in Event.__subclasses__()}


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from its JSON form; unknown keys are ignored (newer writers)."""
    cls = EVENT_TYPES[data["kind"]]
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def without_timing(event: Event) -> dict[str, Any]:
    return {k: v for k, v in event.to_dict().items() if k not in TIMING_FIELDS}


def read_events(path: str | os.PathLike) -> list[Event]:
    """An events.jsonl's events; a torn last line (killed writer) ends them, not fatally."""
    return read_new_events(path)[0]


def read_new_events(path: str | os.PathLike, offset: int = 0) -> tuple[list[Event], int, int]:
    """The events of an events.jsonl's complete lines from byte `offset` on, the offset after
    those lines, and how many of them held no known event (skipped). A torn last line (its
    writer mid-write, or killed) is left for the next read, which begins with it."""
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read()
    complete = data[:data.rfind(b"\n") + 1]
    events: list[Event] = []
    skipped = 0
    for line in complete.splitlines():
        try:
            events.append(event_from_dict(json.loads(line)))
        except (ValueError, KeyError, TypeError):  # UnicodeDecodeError is a ValueError
            skipped += bool(line.strip())  # a blank line is neither an event nor a wrong one
    return events, offset + len(complete), skipped
