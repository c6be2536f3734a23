"""Settings: typed, frozen dataclasses for every table of settings.toml, loaded with tomli.

Every validation failure raises SettingsError with one line naming the key, the value and
what is allowed. Command-line overrides use the same dotted keys: `run.seed=1`,
`stages.2.lr=2e-4` (stages are numbered from 1, as everywhere else in ashem)."""
from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import tomli

from . import plan, sinks, tile_probe
from .exit_signals import SIGNALS
from .names import INFERENCES, PRECISIONS

LOCAL_FILE = "settings.toml"
DEFAULTS_NOTICE = (f"no ./{LOCAL_FILE} here: using the built-in defaults (the spec's set-up); "
                   f"'ashem-engine init' writes them to ./{LOCAL_FILE} to edit")


class SettingsError(ValueError):
    """A bad setting. str(error) is one line meant for a person."""


def default_settings_text() -> str:
    """The commented settings.toml shipped with the package: the spec's set-up."""
    return (resources.files(__package__) / "default_settings.toml").read_text("utf-8")


# default_settings.toml is the one place that gives each key, its default and its meaning;
# the tables' dataclasses are made from it, so loading that file gives exactly Settings().
DEFAULTS = tomli.loads(default_settings_text())


def _table_class(name: str, table: str) -> type:
    """A frozen dataclass with one field per key of [table], of its value's type and with
    its value as default (arrays become tuples of strings)."""
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in DEFAULTS[table].items()}
    columns = [(key, type(value).__name__, field(default=value)) for key, value in values.items()]
    cls = dataclasses.make_dataclass(name, columns, frozen=True)
    cls.__module__ = __name__  # found here by pickle and copy, as a class written here is
    return cls


RunSettings = _table_class("RunSettings", "run")
DataSettings = _table_class("DataSettings", "data")
ModelSettings = _table_class("ModelSettings", "model")
OptimizerSettings = _table_class("OptimizerSettings", "optimizer")
MiningSettings = _table_class("MiningSettings", "mining")
EvaluationSettings = _table_class("EvaluationSettings", "evaluation")
JointSettings = _table_class("JointSettings", "joint")


@dataclass(frozen=True)
class StageSettings:
    layers: int
    lr: float
    max_epochs: int = 50
    patience: int = 1
    hard_ratio: Optional[float] = None  # None in stage 1, required in later stages
    context: Optional[str] = None  # None in stage 1, required in later stages
    freeze_head: bool = False
    tokens: Optional[str] = None  # None in stage 1; later: "hard" or "all" (no mining selection)
    trainable: Optional[str] = None  # None in stage 1; later: "new" or "all" (the whole model)
    init: Optional[str] = None  # None in stage 1; later: "fresh" or "copy" (depthwise stacking)


DEFAULT_STAGES = tuple(StageSettings(**table) for table in DEFAULTS["stages"])


@dataclass(frozen=True)
class Settings:
    run: RunSettings = field(default_factory=RunSettings)
    data: DataSettings = field(default_factory=DataSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    mining: MiningSettings = field(default_factory=MiningSettings)
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    joint: JointSettings = field(default_factory=JointSettings)
    stages: tuple = DEFAULT_STAGES

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["run"]["pause_at"] = list(self.run.pause_at)
        out["run"]["loggers"] = list(self.run.loggers)
        out["evaluation"]["signals"] = list(self.evaluation.signals)
        out["stages"] = [stage_table(s) for s in self.stages]
        return out

    def replace(self, **tables: Any) -> "Settings":
        return dataclasses.replace(self, **tables)


def stage_table(stage: StageSettings) -> dict[str, Any]:
    """A stage as its [[stages]] table: keys without a value are left out."""
    return {k: v for k, v in dataclasses.asdict(stage).items() if v is not None}


# The tables other than [[stages]], by name: {"run": RunSettings, ...}.
TABLES = {f.name: f.default_factory for f in fields(Settings) if f.name != "stages"}


# -- loading ----------------------------------------------------------------------------

def load_settings(path: str | os.PathLike | None = "settings.toml",
                  overrides: Sequence[str] = ()) -> Settings:
    """A TOML file's settings (None: the built-in defaults), `table.key=value` overrides applied."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise SettingsError(f"settings file {str(p)!r} does not exist (give --settings FILE)")
        try:
            raw = tomli.loads(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise SettingsError(f"settings file {str(p)!r} is not UTF-8 text") from None
        except OSError as e:
            raise SettingsError(f"settings file {str(p)!r} cannot be read: {e.strerror}") from None
        except tomli.TOMLDecodeError as e:
            raise SettingsError(f"settings file {str(p)!r} is not valid TOML: {e}") from None
    for item in overrides:
        apply_override(raw, item)
    return settings_from_dict(raw)


def choose_settings_file(given: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """The file to load and a notice for the user: the given file, else ./settings.toml,
    else None (the built-in defaults, which equal the shipped settings.toml)."""
    if given is None and not Path(LOCAL_FILE).is_file():
        return None, DEFAULTS_NOTICE
    return (LOCAL_FILE if given is None else given), None


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
    key, sep, text = (part.strip() for part in item.partition("="))
    if not sep or not key:
        raise SettingsError(f"--set {item!r}: expected table.key=value, e.g. run.seed=1")
    try:
        value = tomli.loads(f"v = {text}")["v"]
    except tomli.TOMLDecodeError:
        value = text  # a bare word is taken as a string: run.name=demo
    return key.split("."), value


def apply_override(raw: dict[str, Any], item: str) -> None:
    parts, value = parse_override(item)
    if parts[0] == "stages":
        if len(parts) != 3 or not parts[1].isdigit():
            raise SettingsError(f"--set {item!r}: stage keys look like stages.2.lr=1e-4")
        number = int(parts[1])
        stages = _stage_tables(raw.setdefault("stages", [stage_table(s) for s in DEFAULT_STAGES]))
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
    for name in raw:
        if name not in TABLES and name != "stages":
            allowed = ", ".join(sorted([*TABLES, "stages"]))
            raise SettingsError(f"unknown table [{name}]; allowed: {allowed}")
    built: dict[str, Any] = {}
    for name, cls in TABLES.items():
        table = raw.get(name, {})
        if not isinstance(table, dict):
            raise SettingsError(f"{name} must be a table ([{name}])")
        built[name] = _build(cls, table, name)
    stages = raw.get("stages")
    built["stages"] = DEFAULT_STAGES if stages is None else _build_stages(_stage_tables(stages))
    settings = Settings(**built)
    validate(settings)
    return settings


def _stage_tables(stages: Any) -> list[dict[str, Any]]:
    if not isinstance(stages, list) or not all(isinstance(s, dict) for s in stages):
        raise SettingsError("stages must be an array of tables ([[stages]])")
    return stages


def _build_stages(tables: list[dict[str, Any]]) -> tuple:
    """A stage's missing keys take the spec's values: stage 1's for the first stage, stage
    2's for every later one, which is two layers deeper than the stage before it."""
    stages: list[StageSettings] = []
    for number, table in enumerate(tables, start=1):
        defaults = stage_table(DEFAULT_STAGES[0 if number == 1 else 1])
        if stages:
            defaults["layers"] = stages[-1].layers + 2
        stages.append(_build(StageSettings, table, f"stages.{number}", defaults))
    return tuple(stages)


def _build(cls: type, table: dict[str, Any], prefix: str,
           defaults: Optional[dict[str, Any]] = None) -> Any:
    known = {f.name: f for f in fields(cls)}
    values = dict(defaults or {})
    for key, value in table.items():
        if key not in known:
            raise SettingsError(
                f"unknown key {prefix}.{key} = {value!r}; allowed in {prefix}: "
                f"{', '.join(known)}")
        values[key] = _coerce(f"{prefix}.{key}", value, known[key].type)
    return cls(**values)


# A field's annotation -> its type and how an error names it.
TYPES = {"int": (int, "an integer"), "float": (float, "a number"), "str": (str, "a string"),
         "bool": (bool, "true or false"), "tuple": (tuple, "a list of strings")}


def _coerce(key: str, value: Any, annotation: str) -> Any:
    expected, name = TYPES[annotation.replace("Optional[", "").rstrip("]")]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is tuple:
        if isinstance(value, str):
            value = [value] if value else []
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
    elif isinstance(value, expected) and (expected is bool or not isinstance(value, bool)):
        return value
    raise SettingsError(f"{key} = {value!r}: must be {name}")


# -- validation: rules (key, test of the value, what is allowed), checked in order; the first
# broken one is reported. A test also sees `c`: the whole Settings, or the stage for a stage.

Rule = tuple[str, Callable[[Any, Any], bool], str]


def _at_least(low: int, note: str = "") -> tuple:
    return lambda v, c: v >= low, f"must be >= {low}{note}"


def _above(low: int) -> tuple:
    return lambda v, c: v > low, f"must be > {low}"


def _one_of(*allowed: str) -> tuple:
    return lambda v, c: v in allowed, "allowed: " + ", ".join(allowed)


def _later_only(key: str, stage_one: str) -> Rule:
    return key, lambda v, c: v is None, f"stage 1 {stage_one}; {key} belongs to stages 2 and later"


def _file_name() -> tuple:
    return (lambda v, c: bool(v) and "/" not in v and "\\" not in v,
            "must be a file name inside data.path (not empty, no '/' or '\\')")


RULES: list[Rule] = [
    ("run.name", lambda v, c: bool(v) and "/" not in v and v.strip() == v,
     "must be a non-empty name without '/' or surrounding spaces"),
    ("run.seed", *_at_least(0)),
    ("run.runs_dir", lambda v, c: bool(v), "must be a directory path"),
    ("run.device", *_one_of("cpu", "cuda", "auto")),
    ("run.threads", *_at_least(0, " (0 = chosen by ashem)")),
    ("run.precision", *_one_of(*PRECISIONS)),
    ("run.head_tiles", lambda v, c: tile_probe.describe_setting(v) is None,
     tile_probe.describe_setting("?")),
    ("run.progress_events_per_epoch", *_at_least(1)),
    ("run.peer_timeout_s", *_above(0)),
    ("run.control_every", *_at_least(1)),
    ("run.machine_sample_s", lambda v, c: 0 <= v < float("inf"),
     "must be a number of seconds >= 0 (0 = no machine sampler)"),
    ("run.training_macs_budget", lambda v, c: 0 <= v < float("inf"),
     "must be a number of MACs >= 0 (0 = no budget)"),
    ("run.training_macs_budget_from", lambda v, c: v.strip() == v,
     "must be a configuration's name (a settings file's stem) without surrounding spaces, or \"\""),
    ("run.loggers", lambda v, c: len(v) == len(set(v)) and set(v) <= set(sinks.LOGGERS),
     "a list without repeats of: " + ", ".join(sinks.LOGGERS)),
    ("joint.enabled", lambda v, c: not v or len(c.stages) >= 2,  # (its plan needs them)
     "a joint run needs 2 or more [[stages]], one per exit"),
    ("run.pause_at", lambda v, c: set(v) <= {s.boundary for s in plan.of_settings(c)},
     "each entry must be a hold point of the run's plan: stage-N, mining-N before a stage "
     "N+1, or evaluation"),
    ("data.train_samples", *_at_least(0, " (0 = the whole split)")),
    ("data.eval_samples", *_at_least(-1, " (-1 = set by eval_fraction, 0 = the whole split)")),
    ("data.eval_fraction", lambda v, c: 0 < v <= 1, "must be in (0, 1]"),
    ("data.vocab_size", lambda v, c: v == 0 or v >= 3,
     "must be 0 (no cap) or >= 3 (<unk>, <pad> and at least one word)"),
    ("data.seq_len", *_at_least(1)),
    ("data.batch_size", *_at_least(1)),
    ("data.micro_batch_size", *_at_least(0, " (0 = the whole batch of each process)")),
    ("data.train_file", *_file_name()),
    ("data.validation_file", *_file_name()),
    ("data.test_file", *_file_name()),
    ("data.hub_name", lambda v, c: bool(v), "must be a dataset name"),
    ("data.hub_text_column", lambda v, c: bool(v), "must be the name of a text column"),
    ("model.dim", *_at_least(1)),
    ("model.heads", lambda v, c: v >= 1 and c.model.dim % v == 0,
     "must divide model.dim ({c.model.dim})"),
    ("model.heads", lambda v, c: (c.model.dim // max(v, 1)) % 2 == 0,
     "the head dimension (dim / heads) must be even for rotary embeddings"),
    ("model.ffn_hidden", *_at_least(1)),
    ("model.norm_eps", *_above(0)),
    ("model.linear_init_std", *_above(0)),
    ("model.embedding_init_std", *_above(0)),
    ("model.rope_base", *_above(1)),
    ("model.norm", lambda v, c: v in ("post", "pre"),
     "allowed: post (x = norm(x + f(x)), the spec's) or pre (x = x + f(norm(x)), a final norm)"),
    ("optimizer.weight_decay", *_at_least(0)),
    ("optimizer.grad_clip", *_above(0)),
    ("optimizer.schedule", *_one_of("constant", "cosine")),
    ("optimizer.warmup_steps", *_at_least(0, " (0 = no warm-up)")),
    ("optimizer.decay_epochs", *_at_least(0, " (0 = the stage's max_epochs)")),
    ("optimizer.min_lr_ratio", lambda v, c: 0 <= v <= 1,
     "must be in [0, 1] (the cosine's floor as a fraction of the stage's lr)"),
    ("mining.split", *_one_of("train", "validation")),
    ("mining.histogram_bins", *_at_least(2)),
    ("mining.top_words", *_at_least(0)),
    ("mining.examples", *_at_least(0)),
    ("evaluation.split", *_one_of("validation", "test")),
    ("evaluation.inference", *_one_of(*INFERENCES)),
    ("evaluation.sweep_points", lambda v, c: v == 0 or v >= 2, "must be 0 (no sweep) or >= 2"),
    ("evaluation.signals", lambda v, c: 1 <= len(v) == len(set(v)) and set(v) <= set(SIGNALS),
     "a list without repeats of: " + ", ".join(SIGNALS)),
    ("joint.weights", *_one_of("equal", "depth")),
]
EVERY_STAGE: list[Rule] = [
    ("lr", *_above(0)), ("max_epochs", *_at_least(1)), ("patience", *_at_least(1))]
FIRST_STAGE: list[Rule] = [
    ("layers", *_at_least(1)), *EVERY_STAGE,
    _later_only("hard_ratio", "trains on all data"),
    _later_only("context", "sees whole sequences"),
    ("freeze_head", lambda v, c: not v, "stage 1 must train its output head"),
    _later_only("tokens", "trains on every token"),
    _later_only("trainable", "trains the whole model"),
    _later_only("init", "starts from a fresh model"),
]


# A later stage's ablations of ASHEM (growing + freezing + training on hard tokens only);
# here a test's `c` is the stage itself.
ABLATIONS: list[Rule] = [
    ("tokens", lambda v, c: v in ("hard", "all"),
     "allowed: hard (the tokens mined at the previous exit) or all (every token that reaches "
     "it: no mining selection)"),
    ("trainable", lambda v, c: v in ("new", "all"),
     "allowed: new (the new layers, and the head unless freeze_head) or all (the whole model)"),
    ("trainable", lambda v, c: v != "all" or c.context == "sequence",
     "all needs context = 'sequence', not {c.context!r} (the token context trains on "
     "saved hidden states)"),
    ("trainable", lambda v, c: v != "all" or not c.freeze_head,
     "all trains the head as well; it needs freeze_head = false"),
    ("init", lambda v, c: v in ("fresh", "copy"),
     "allowed: fresh (new layers freshly initialised) or copy (new layer i a copy of trained "
     "layer i mod the layers before: the trained stack repeated upward)"),
]


def _left_for_joint(key: str, default: Any) -> Rule:
    shown = str(default).lower() if isinstance(default, bool) else repr(default)
    return key, lambda v, c: v == default, (
        "with joint.enabled = true one model trains from scratch and later stages give only "
        f"layers, hard_ratio and context; leave {key} = {shown}")


# A joint run's later stages: how ASHEM grows and trains a stage is not theirs to set.
JOINT_LATER: list[Rule] = [_left_for_joint("tokens", "hard"), _left_for_joint("trainable", "new"),
                           _left_for_joint("init", "fresh"), _left_for_joint("freeze_head", False)]


def _later_stage(number: int, layers_before: int) -> list[Rule]:
    return [("layers", lambda v, c: v > layers_before,
             f"must be greater than stages.{number - 1}.layers ({layers_before})"),
            *EVERY_STAGE,
            ("hard_ratio", lambda v, c: v is not None and 0 < v < 1,
             "must be in (0, 1), e.g. 0.5"),
            ("context", lambda v, c: v in ("token", "sequence"),
             "allowed: token (new layers see each hard token's hidden state alone, "
             "as the spec) or sequence (whole sequences, loss at hard tokens only)"),
            *ABLATIONS,
            ("trainable", lambda v, c: v != "all" or number == 2,
             "all is for stage 2 only (below a later stage, tokens leave at earlier exits, "
             "which training from the token ids would not follow)")]


def _check(rules: list[Rule], root: Any, c: Any = None, prefix: str = "") -> None:
    for key, ok, allowed in rules:
        value = functools.reduce(getattr, key.split("."), root)
        if not ok(value, c):
            shown = list(value) if isinstance(value, tuple) else value
            raise SettingsError(f"{prefix}{key} = {shown!r}: {allowed.format(c=c)}")


def validate(settings: Settings) -> None:
    _check(RULES, settings, settings)
    missing = sinks.missing_extra(settings.run.loggers)  # a run fails here, before it starts
    if missing:
        raise SettingsError(f"run.loggers = {list(settings.run.loggers)!r}: {missing}")
    if not settings.stages:
        raise SettingsError("stages = []: at least one [[stages]] table is needed")
    layers_before = 0
    for number, stage in enumerate(settings.stages, start=1):
        rules = FIRST_STAGE if number == 1 else _later_stage(number, layers_before)
        if number > 1 and settings.joint.enabled:
            rules = [*JOINT_LATER, *rules]
        _check(rules, stage, stage, prefix=f"stages.{number}.")
        layers_before = stage.layers
