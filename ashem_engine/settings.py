"""Settings: typed, frozen dataclasses for every table of settings.toml, loaded with tomli.

Every validation failure raises SettingsError with one line naming the key, the value and
what is allowed. Command-line overrides use the same dotted keys: `run.seed=1`,
`stages.2.lr=2e-4` (stages are numbered from 1, as everywhere else in ashem).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Sequence

import tomli

from .names import INFERENCES, SIGNALS

SPLITS = ("train", "validation", "test")
LOCAL_FILE = "settings.toml"
DEFAULTS_NOTICE = (f"no ./{LOCAL_FILE} here: using the built-in defaults (the spec's set-up); "
                   f"'ashem-engine init' writes them to ./{LOCAL_FILE} to edit")
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


def choose_settings_file(given: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """The file to load and a notice for the user: the given file, else ./settings.toml,
    else None (the built-in defaults, which equal the shipped settings.toml)."""
    if given is not None:
        return given, None
    if Path(LOCAL_FILE).is_file():
        return LOCAL_FILE, None
    return None, DEFAULTS_NOTICE


def default_settings_text() -> str:
    """The commented settings.toml shipped with the package: the spec's set-up."""
    return (resources.files(__package__) / "default_settings.toml").read_text("utf-8")


def write_default_settings(path: str | os.PathLike = LOCAL_FILE) -> Path:
    """Writes the commented defaults to `path`, atomically; never replaces an existing file."""
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(default_settings_text(), encoding="utf-8")
        os.link(temporary, target)  # fails if target exists: nothing is overwritten
    except FileExistsError:
        raise SettingsError(f"{str(target)!r} already exists; nothing was written (remove it "
                            "or name another file)") from None
    except OSError as e:
        raise SettingsError(f"cannot write {str(target)!r}: {e.strerror}") from None
    finally:
        temporary.unlink(missing_ok=True)
    return target


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
        built["stages"] = _build_stages(stages_raw)
    settings = Settings(**built)
    validate(settings)
    return settings


def stage_defaults(number: int, previous_layers: int) -> dict[str, Any]:
    """A stage's missing keys take the spec's values: stage 1's for the first stage, stage
    2's for every later one, which is two layers deeper than the stage before it."""
    spec = DEFAULT_STAGES[0 if number == 1 else 1]
    values = {k: v for k, v in dataclasses.asdict(spec).items() if v is not None}
    if number > 1:
        values["layers"] = previous_layers + 2
    return values


def _build_stages(tables: list[dict[str, Any]]) -> tuple:
    stages: list[StageSettings] = []
    for number, table in enumerate(tables, start=1):
        previous_layers = stages[-1].layers if stages else 0
        stages.append(_build(StageSettings, table, f"stages.{number}",
                             stage_defaults(number, previous_layers)))
    return tuple(stages)


def _type_name(t: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            tuple: "a list of strings"}.get(t, str(t))


def _build(cls: type, table: dict[str, Any], prefix: str,
           defaults: Optional[dict[str, Any]] = None) -> Any:
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = dict(defaults or {})
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


def validate(settings: Settings) -> None:
    _validate_run(settings.run, len(settings.stages))
    _validate_data(settings.data)
    _validate_model(settings.model)
    _validate_optimizer(settings.optimizer)
    _validate_mining(settings.mining)
    _validate_evaluation(settings.evaluation)
    _validate_stages(settings.stages)


def _validate_run(run: RunSettings, n_stages: int) -> None:
    _check(bool(run.name) and "/" not in run.name and run.name.strip() == run.name, "run.name",
           run.name, "must be a non-empty name without '/' or surrounding spaces")
    _check(run.seed >= 0, "run.seed", run.seed, "must be >= 0")
    _check(bool(run.runs_dir), "run.runs_dir", run.runs_dir, "must be a directory path")
    _check(run.device in ("cpu", "cuda", "auto"), "run.device", run.device,
           "allowed: cpu, cuda, auto")
    _check(run.threads >= 0, "run.threads", run.threads, "must be >= 0 (0 = chosen by ashem)")
    _check(run.progress_events_per_epoch >= 1, "run.progress_events_per_epoch",
           run.progress_events_per_epoch, "must be >= 1")
    for boundary in run.pause_at:
        _check(_valid_boundary(boundary, n_stages), "run.pause_at", list(run.pause_at),
               f"each entry must be {BOUNDARIES_HELP} for an existing stage")


def _validate_data(data: DataSettings) -> None:
    _check(data.train_samples >= 1, "data.train_samples", data.train_samples, "must be >= 1")
    _check(0 < data.eval_fraction <= 1, "data.eval_fraction", data.eval_fraction,
           "must be in (0, 1]")
    _check(data.seq_len >= 1, "data.seq_len", data.seq_len, "must be >= 1")
    _check(data.batch_size >= 1, "data.batch_size", data.batch_size, "must be >= 1")
    _check(bool(data.hub_name), "data.hub_name", data.hub_name, "must be a dataset name")


def _validate_model(model: ModelSettings) -> None:
    _check(model.dim >= 1, "model.dim", model.dim, "must be >= 1")
    _check(model.heads >= 1 and model.dim % model.heads == 0, "model.heads", model.heads,
           f"must divide model.dim ({model.dim})")
    _check((model.dim // max(model.heads, 1)) % 2 == 0, "model.heads", model.heads,
           "the head dimension (dim / heads) must be even for rotary embeddings")
    for key in ("ffn_hidden", "norm_eps", "linear_init_std", "embedding_init_std"):
        value = getattr(model, key)
        _check(value > 0, f"model.{key}", value, "must be >= 1" if key == "ffn_hidden"
               else "must be > 0")
    _check(model.rope_base > 1, "model.rope_base", model.rope_base, "must be > 1")


def _validate_optimizer(optimizer: OptimizerSettings) -> None:
    _check(optimizer.weight_decay >= 0, "optimizer.weight_decay", optimizer.weight_decay,
           "must be >= 0")
    _check(optimizer.grad_clip > 0, "optimizer.grad_clip", optimizer.grad_clip, "must be > 0")


def _validate_mining(mining: MiningSettings) -> None:
    _check(mining.split in ("train", "validation"), "mining.split", mining.split,
           "allowed: train, validation")
    _check(mining.histogram_bins >= 2, "mining.histogram_bins", mining.histogram_bins,
           "must be >= 2")
    _check(mining.top_words >= 0, "mining.top_words", mining.top_words, "must be >= 0")
    _check(mining.examples >= 0, "mining.examples", mining.examples, "must be >= 0")


def _validate_evaluation(evaluation: EvaluationSettings) -> None:
    _check(evaluation.split in ("validation", "test"), "evaluation.split", evaluation.split,
           "allowed: validation, test")
    _check(evaluation.inference in INFERENCES, "evaluation.inference",
           evaluation.inference, "allowed: " + ", ".join(INFERENCES))
    _check(evaluation.sweep_points == 0 or evaluation.sweep_points >= 2,
           "evaluation.sweep_points", evaluation.sweep_points, "must be 0 (no sweep) or >= 2")
    signals = evaluation.signals
    _check(len(signals) >= 1 and len(set(signals)) == len(signals)
           and all(x in SIGNALS for x in signals),
           "evaluation.signals", list(signals), "a list without repeats of: " + ", ".join(SIGNALS))


def _validate_stages(stages: tuple) -> None:
    _check(len(stages) >= 1, "stages", [], "at least one [[stages]] table is needed")
    previous_layers = 0
    for number, stage in enumerate(stages, start=1):
        key = f"stages.{number}"
        _check(stage.layers > previous_layers, f"{key}.layers", stage.layers,
               "must be >= 1" if number == 1 else
               f"must be greater than stages.{number - 1}.layers ({previous_layers})")
        previous_layers = stage.layers
        _check(stage.lr > 0, f"{key}.lr", stage.lr, "must be > 0")
        _check(stage.max_epochs >= 1, f"{key}.max_epochs", stage.max_epochs, "must be >= 1")
        _check(stage.patience >= 1, f"{key}.patience", stage.patience, "must be >= 1")
        if number == 1:
            _validate_first_stage(stage)
        else:
            _validate_later_stage(stage, key)


def _validate_first_stage(stage: StageSettings) -> None:
    _check(stage.hard_ratio is None, "stages.1.hard_ratio", stage.hard_ratio,
           "stage 1 trains on all data; hard_ratio belongs to stages 2 and later")
    _check(stage.context is None, "stages.1.context", stage.context,
           "stage 1 sees whole sequences; context belongs to stages 2 and later")
    _check(not stage.freeze_head, "stages.1.freeze_head", stage.freeze_head,
           "stage 1 must train its output head")


def _validate_later_stage(stage: StageSettings, key: str) -> None:
    _check(stage.hard_ratio is not None and 0 < stage.hard_ratio < 1, f"{key}.hard_ratio",
           stage.hard_ratio, "must be in (0, 1), e.g. 0.5")
    _check(stage.context in ("token", "sequence"), f"{key}.context", stage.context,
           "allowed: token (new layers see each hard token's hidden state alone, "
           "as the spec) or sequence (whole sequences, loss at hard tokens only)")


def _valid_boundary(name: str, n_stages: int) -> bool:
    if name == "evaluation":
        return True
    kind, _, number = name.partition("-")
    if kind not in ("stage", "mining") or not number.isdigit() or str(int(number)) != number:
        return False
    return 1 <= int(number) <= (n_stages if kind == "stage" else n_stages - 1)
