"""Settings: typed, frozen dataclasses for every table of settings.toml, loaded with tomli.

Every validation failure raises SettingsError with one line naming the key, the value and
what is allowed. Command-line overrides use the same dotted keys: `run.seed=1`,
`stages.2.lr=2e-4` (stages are numbered from 1, as everywhere else in ashem).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Sequence

import tomli

from .names import INFERENCES, SIGNALS

SPLITS = ("train", "validation", "test")
BOUNDARIES_HELP = "stage-N, mining-N or evaluation"


class SettingsError(ValueError):
    """A bad setting. str(error) is one line meant for a person."""


@dataclass(frozen=True)
class RunSettings:
    name: str = "ashem"
    seed: int = 42
    runs_dir: str = "runs"
    device: str = "cpu"
    threads: int = 0
    pause_at: tuple = ("stage-1", "mining-1")
    progress_events_per_epoch: int = 100


@dataclass(frozen=True)
class DataSettings:
    path: str = ""
    hub_name: str = "wikitext"
    hub_config: str = "wikitext-2-raw-v1"
    train_samples: int = 10000
    eval_fraction: float = 0.2
    seq_len: int = 32
    batch_size: int = 64


@dataclass(frozen=True)
class ModelSettings:
    dim: int = 64
    heads: int = 4
    ffn_hidden: int = 256
    norm_eps: float = 1e-6
    rope_base: float = 10000.0
    linear_init_std: float = 0.125
    embedding_init_std: float = 0.02


@dataclass(frozen=True)
class OptimizerSettings:
    weight_decay: float = 0.01
    grad_clip: float = 1.0


@dataclass(frozen=True)
class MiningSettings:
    split: str = "validation"
    histogram_bins: int = 50
    top_words: int = 20
    examples: int = 8


@dataclass(frozen=True)
class EvaluationSettings:
    split: str = "validation"
    # How layers above an exit run at inference: "spec" (over whole sequences, every token,
    # as the reference) or "as_trained" (token context: each token alone; sequence context:
    # whole sequences with exited tokens frozen at their exit state).
    inference: str = "spec"
    sweep_points: int = 21  # thresholds in the quality/cost sweep after the report; 0 = none
    signals: tuple = ("softmax", "classifier")  # exit signals the sweep compares


@dataclass(frozen=True)
class StageSettings:
    layers: int
    lr: float
    max_epochs: int = 50
    patience: int = 1
    hard_ratio: Optional[float] = None  # stages >= 2: quantile of the previous exit's confidence
    context: Optional[str] = None  # stages >= 2: "token" (the spec's) or "sequence"
    freeze_head: bool = False  # stages >= 2: keep the shared output head fixed


DEFAULT_STAGES = (
    StageSettings(layers=2, lr=1e-3, max_epochs=50, patience=1),
    StageSettings(layers=4, lr=1e-4, max_epochs=50, patience=3, hard_ratio=0.5, context="token"),
)


@dataclass(frozen=True)
class Settings:
    run: RunSettings = field(default_factory=RunSettings)
    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    mining: MiningSettings = field(default_factory=MiningSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    stages: tuple = DEFAULT_STAGES

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["run"]["pause_at"] = list(self.run.pause_at)
        out["evaluation"]["signals"] = list(self.evaluation.signals)
        out["stages"] = [{k: v for k, v in s.items() if v is not None} for s in out["stages"]]
        return out

    def replace(self, **tables: Any) -> "Settings":
        return dataclasses.replace(self, **tables)


TABLES = {
    "run": RunSettings,
    "data": DataSettings,
    "model": ModelSettings,
    "optimizer": OptimizerSettings,
    "mining": MiningSettings,
    "evaluation": EvaluationSettings,
}


# ---------------------------------------------------------------------------------------
# Loading


def load_settings(path: str | os.PathLike | None = "settings.toml",
                  overrides: Sequence[str] = ()) -> Settings:
    """Reads a TOML file (None: built-in defaults), applies `table.key=value` overrides,
    validates, and returns frozen Settings."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise SettingsError(f"settings file {str(p)!r} does not exist (give --settings FILE)")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise SettingsError(f"settings file {str(p)!r} is not UTF-8 text") from None
        except OSError as e:
            raise SettingsError(f"settings file {str(p)!r} cannot be read: {e.strerror}") from None
        try:
            raw = tomli.loads(text)
        except tomli.TOMLDecodeError as e:
            raise SettingsError(f"settings file {str(p)!r} is not valid TOML: {e}") from None
    for item in overrides:
        apply_override(raw, item)
    return settings_from_dict(raw)


def parse_override(item: str) -> tuple[list[str], Any]:
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SettingsError(f"--set {item!r}: expected table.key=value, e.g. run.seed=1")
    try:
        value = tomli.loads(f"v = {text.strip()}")["v"]
    except tomli.TOMLDecodeError:
        value = text.strip()  # a bare word is taken as a string: run.name=demo
    return key.split("."), value


def apply_override(raw: dict[str, Any], item: str) -> None:
    parts, value = parse_override(item)
    if parts[0] == "stages":
        if len(parts) != 3 or not parts[1].isdigit():
            raise SettingsError(f"--set {item!r}: stage keys look like stages.2.lr=1e-4")
        number = int(parts[1])
        stages = raw.setdefault("stages", [dataclasses.asdict(s) for s in DEFAULT_STAGES])
        if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
            raise SettingsError("stages must be an array of tables ([[stages]])")
        stages[:] = [{k: v for k, v in s.items() if v is not None} for s in stages]
        if not 1 <= number <= len(stages) + 1:
            raise SettingsError(
                f"--set {item!r}: there are {len(stages)} stages; use stages.1 to "
                f"stages.{len(stages)} (or stages.{len(stages) + 1} to add one)")
        if number == len(stages) + 1:
            stages.append({})
        stages[number - 1][parts[2]] = value
        return
    if len(parts) != 2:
        raise SettingsError(f"--set {item!r}: expected table.key=value, e.g. run.seed=1")
    table = raw.setdefault(parts[0], {})
    if not isinstance(table, dict):
        raise SettingsError(f"--set {item!r}: {parts[0]!r} is not a table")
    table[parts[1]] = value


def settings_from_dict(raw: dict[str, Any]) -> Settings:
    allowed = sorted([*TABLES, "stages"])
    for name in raw:
        if name not in TABLES and name != "stages":
            raise SettingsError(f"unknown table [{name}]; allowed: {', '.join(allowed)}")
    built: dict[str, Any] = {}
    for name, cls in TABLES.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise SettingsError(f"{name} must be a table ([{name}])")
        built[name] = _build(cls, table, name)
    stages_raw = raw.get("stages")
    if stages_raw is None:
        built["stages"] = DEFAULT_STAGES
    else:
        if not isinstance(stages_raw, list) or not all(isinstance(s, dict) for s in stages_raw):
            raise SettingsError("stages must be an array of tables ([[stages]])")
        built["stages"] = tuple(
            _build(StageSettings, s, f"stages.{i + 1}") for i, s in enumerate(stages_raw))
    settings = Settings(**built)
    validate(settings)
    return settings


def _type_name(t: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            tuple: "a list of strings"}.get(t, str(t))


def _build(cls: type, table: dict[str, Any], prefix: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in known:
            raise SettingsError(
                f"unknown key {prefix}.{key} = {value!r}; allowed in {prefix}: "
                f"{', '.join(known)}")
        values[key] = _coerce(f"{prefix}.{key}", value, known[key].type)
    missing = [f.name for f in fields(cls)
               if f.name not in values and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise SettingsError(f"{prefix} is missing {', '.join(missing)}")
    return cls(**values)


def _coerce(key: str, value: Any, annotation: str) -> Any:
    base = annotation.replace("Optional[", "").rstrip("]")
    expected = {"int": int, "float": float, "str": str, "bool": bool, "tuple": tuple}[base]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is tuple:
        if isinstance(value, str):
            value = [value] if value else []
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
    elif isinstance(value, expected) and (expected is bool or not isinstance(value, bool)):
        return value
    raise SettingsError(f"{key} = {value!r}: must be {_type_name(expected)}")


# ---------------------------------------------------------------------------------------
# Validation


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise SettingsError(f"{key} = {value!r}: {allowed}")


def validate(s: Settings) -> None:
    r, d, m, o = s.run, s.data, s.model, s.optimizer
    _check(bool(r.name) and "/" not in r.name and r.name.strip() == r.name, "run.name", r.name,
           "must be a non-empty name without '/' or surrounding spaces")
    _check(r.seed >= 0, "run.seed", r.seed, "must be >= 0")
    _check(bool(r.runs_dir), "run.runs_dir", r.runs_dir, "must be a directory path")
    _check(r.device in ("cpu", "cuda", "auto"), "run.device", r.device,
           "allowed: cpu, cuda, auto")
    _check(r.threads >= 0, "run.threads", r.threads, "must be >= 0 (0 = chosen by ashem)")
    _check(r.progress_events_per_epoch >= 1, "run.progress_events_per_epoch",
           r.progress_events_per_epoch, "must be >= 1")
    for b in r.pause_at:
        _check(_valid_boundary(b, len(s.stages)), "run.pause_at", list(r.pause_at),
               f"each entry must be {BOUNDARIES_HELP} for an existing stage")

    _check(d.train_samples >= 1, "data.train_samples", d.train_samples, "must be >= 1")
    _check(0 < d.eval_fraction <= 1, "data.eval_fraction", d.eval_fraction,
           "must be in (0, 1]")
    _check(d.seq_len >= 1, "data.seq_len", d.seq_len, "must be >= 1")
    _check(d.batch_size >= 1, "data.batch_size", d.batch_size, "must be >= 1")
    _check(bool(d.hub_name), "data.hub_name", d.hub_name, "must be a dataset name")

    _check(m.dim >= 1, "model.dim", m.dim, "must be >= 1")
    _check(m.heads >= 1 and m.dim % m.heads == 0, "model.heads", m.heads,
           f"must divide model.dim ({m.dim})")
    _check((m.dim // max(m.heads, 1)) % 2 == 0, "model.heads", m.heads,
           "the head dimension (dim / heads) must be even for rotary embeddings")
    _check(m.ffn_hidden >= 1, "model.ffn_hidden", m.ffn_hidden, "must be >= 1")
    _check(m.norm_eps > 0, "model.norm_eps", m.norm_eps, "must be > 0")
    _check(m.rope_base > 1, "model.rope_base", m.rope_base, "must be > 1")
    _check(m.linear_init_std > 0, "model.linear_init_std", m.linear_init_std, "must be > 0")
    _check(m.embedding_init_std > 0, "model.embedding_init_std", m.embedding_init_std,
           "must be > 0")

    _check(o.weight_decay >= 0, "optimizer.weight_decay", o.weight_decay, "must be >= 0")
    _check(o.grad_clip > 0, "optimizer.grad_clip", o.grad_clip, "must be > 0")

    _check(s.mining.split in ("train", "validation"), "mining.split", s.mining.split,
           "allowed: train, validation")
    _check(s.mining.histogram_bins >= 2, "mining.histogram_bins", s.mining.histogram_bins,
           "must be >= 2")
    _check(s.mining.top_words >= 0, "mining.top_words", s.mining.top_words, "must be >= 0")
    _check(s.mining.examples >= 0, "mining.examples", s.mining.examples, "must be >= 0")
    _check(s.evaluation.split in ("validation", "test"), "evaluation.split",
           s.evaluation.split, "allowed: validation, test")
    _check(s.evaluation.inference in INFERENCES, "evaluation.inference",
           s.evaluation.inference, "allowed: " + ", ".join(INFERENCES))
    _check(s.evaluation.sweep_points == 0 or s.evaluation.sweep_points >= 2,
           "evaluation.sweep_points", s.evaluation.sweep_points,
           "must be 0 (no sweep) or >= 2")
    _check(len(s.evaluation.signals) >= 1 and len(set(s.evaluation.signals))
           == len(s.evaluation.signals) and all(x in SIGNALS for x in s.evaluation.signals),
           "evaluation.signals", list(s.evaluation.signals),
           "a list without repeats of: " + ", ".join(SIGNALS))

    _check(len(s.stages) >= 1, "stages", [], "at least one [[stages]] table is needed")
    previous_layers = 0
    for i, st in enumerate(s.stages, start=1):
        k = f"stages.{i}"
        _check(st.layers > previous_layers, f"{k}.layers", st.layers,
               "must be >= 1" if i == 1 else
               f"must be greater than stages.{i - 1}.layers ({previous_layers})")
        previous_layers = st.layers
        _check(st.lr > 0, f"{k}.lr", st.lr, "must be > 0")
        _check(st.max_epochs >= 1, f"{k}.max_epochs", st.max_epochs, "must be >= 1")
        _check(st.patience >= 1, f"{k}.patience", st.patience, "must be >= 1")
        if i == 1:
            _check(st.hard_ratio is None, f"{k}.hard_ratio", st.hard_ratio,
                   "stage 1 trains on all data; hard_ratio belongs to stages 2 and later")
            _check(st.context is None, f"{k}.context", st.context,
                   "stage 1 sees whole sequences; context belongs to stages 2 and later")
            _check(not st.freeze_head, f"{k}.freeze_head", st.freeze_head,
                   "stage 1 must train its output head")
        else:
            _check(st.hard_ratio is not None and 0 < st.hard_ratio < 1, f"{k}.hard_ratio",
                   st.hard_ratio, "must be in (0, 1), e.g. 0.5")
            _check(st.context in ("token", "sequence"), f"{k}.context", st.context,
                   "allowed: token (new layers see each hard token's hidden state alone, "
                   "as the spec) or sequence (whole sequences, loss at hard tokens only)")


def _valid_boundary(name: str, n_stages: int) -> bool:
    if name == "evaluation":
        return True
    kind, _, number = name.partition("-")
    if kind not in ("stage", "mining") or not number.isdigit() or str(int(number)) != number:
        return False
    return 1 <= int(number) <= (n_stages if kind == "stage" else n_stages - 1)
