"""A study: several configurations, each run over N seeds, in one directory.

    STUDY/study.json                          the configurations, the overrides, the seeds
    STUDY/runs/<config>/seed-<s>/<UTC>-<config>/   one ordinary run directory per (config, seed)
    STUDY/table.json, table.csv, table.md     the figures across seeds (study_table.py)

A configuration is one settings file; its name is the file's stem (unique in a study) and
becomes its runs' run.name. Its seeds are its run.seed + 0, 1, ..., N - 1: the seed changes
the initialisation and the shuffles only, never the data or its split (data.py reads no random
state). This module plans a study and finds its runs; study_run.py runs them."""
from __future__ import annotations

import dataclasses
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

from .rundir import (SETTINGS_FILE, SUMMARY_FILE, RunDirError, atomic_write_json,
                     create_run_dir)
from .settings import Settings, SettingsError, load_settings, settings_from_dict

STUDY_FILE = "study.json"
LOCK_FILE = "study.lock"  # the process running the study: one at a time
STUDIES_DIR = "studies"  # where a study without --dir goes: studies/<UTC timestamp>-study
FORMAT = 1


class StudyError(Exception):
    """A study that cannot be planned, reopened or run. str(error) is one line for a person."""


@dataclass(frozen=True)
class Configuration:
    name: str
    file: str
    settings: Settings  # after the study's overrides, run.name = name

    def seeds(self, count: int) -> list[int]:
        return [self.settings.run.seed + k for k in range(count)]


@dataclass(frozen=True)
class StudyPlan:
    directory: Path
    configurations: tuple[Configuration, ...]
    seeds: int
    overrides: tuple[str, ...] = ()
    analysis_plan: Optional[dict] = None  # study_plan.py's record of the plan, if it has one

    def to_json(self) -> dict:
        plan = {"analysis_plan": self.analysis_plan} if self.analysis_plan else {}
        return {"format": FORMAT, "seeds": self.seeds, "overrides": list(self.overrides), **plan,
                "seed_rule": "each configuration's run.seed + 0, 1, ..., seeds - 1",
                "configurations": [{"name": c.name, "file": c.file,
                                    "seeds": c.seeds(self.seeds),
                                    "settings": c.settings.to_dict()}
                                   for c in self.configurations]}


@dataclass(frozen=True)
class StudyRun:
    """One (configuration, seed) of a study and where its run directory is, if anywhere."""
    config: Configuration
    seed: int
    seed_dir: Path
    run_dir: Optional[Path]  # None: not started
    status: Optional[str]  # its summary.json's: "finished", "cancelled", "failed", "running"

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def settings(self) -> Settings:
        s = self.config.settings
        return s.replace(run=dataclasses.replace(s.run, seed=self.seed,
                                                 runs_dir=str(self.seed_dir)))


def configuration(file: str, overrides: Sequence[str]) -> Configuration:
    path = Path(file)
    if not path.is_file():
        raise StudyError(f"settings file {file!r} does not exist")
    try:
        loaded = load_settings(path, overrides)
        own = len(load_settings(path).stages)
        if len(loaded.stages) > own:  # a --set meant for other configurations' stages
            raise StudyError(f"{file}: the study's overrides ({', '.join(overrides)}) would add "
                             f"stage {own + 1} to its {own} stage(s); give stage keys in the "
                             "settings files of the configurations that have those stages")
        named = loaded.replace(run=dataclasses.replace(loaded.run, name=path.stem))
        return Configuration(path.stem, file, settings_from_dict(named.to_dict()))
    except SettingsError as e:
        raise StudyError(f"{file}: {e}") from None


def plan_study(files: Sequence[str], seeds: int, overrides: Sequence[str],
               directory: Optional[str]) -> StudyPlan:
    """The study a command asks for (nothing is written). Raises StudyError."""
    if seeds < 1:
        raise StudyError(f"--seeds {seeds}: must be at least 1")
    if not files:
        raise StudyError("give at least one settings file (one per configuration)")
    configs = [configuration(f, overrides) for f in files]
    seen: dict[str, str] = {}
    for c in configs:
        if c.name in seen:
            raise StudyError(f"two configurations named {c.name!r} ({seen[c.name]} and "
                             f"{c.file}): a configuration's name is its file's stem; rename one")
        seen[c.name] = c.file
    check_budget_sources(configs)
    where = Path(directory) if directory else None
    return StudyPlan(where, tuple(configs), seeds, tuple(overrides))  # type: ignore[arg-type]


def check_budget_sources(configs: Sequence[Configuration]) -> None:
    """Each run.training_macs_budget_from names a configuration before its own: at each
    seed that run finishes first (a study runs its configurations in order)."""
    earlier: set[str] = set()
    for c in configs:
        source = c.settings.run.training_macs_budget_from
        if source and source not in earlier:
            raise StudyError(f"{c.file}: run.training_macs_budget_from = {source!r} must name a "
                             f"configuration given before it; before it: "
                             f"{', '.join(sorted(earlier)) or 'none'}")
        earlier.add(c.name)


def is_study(directory: str | os.PathLike) -> bool:
    return (Path(directory) / STUDY_FILE).is_file()


def read_study_file(directory: str | os.PathLike) -> dict:
    path = Path(directory) / STUDY_FILE
    if not Path(directory).is_dir():
        raise StudyError(f"study directory {str(directory)!r} does not exist")
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StudyError(f"{str(directory)!r} is not a study directory (no {STUDY_FILE})") \
            from None
    except (OSError, ValueError) as e:
        raise StudyError(f"{str(path)!r} cannot be read as JSON: {e}") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise StudyError(f"{str(path)!r} is not a study file this version of ashem reads")
    return saved


def reopen_study(directory: str | os.PathLike) -> StudyPlan:
    """The plan a study directory's study.json records. Raises StudyError."""
    saved = read_study_file(directory)
    try:
        configs = tuple(Configuration(c["name"], c["file"], settings_from_dict(c["settings"]))
                        for c in saved["configurations"])
        return StudyPlan(Path(directory), configs, int(saved["seeds"]),
                         tuple(saved.get("overrides", ())), saved.get("analysis_plan"))
    except (KeyError, TypeError, ValueError, SettingsError) as e:
        raise StudyError(f"{str(Path(directory) / STUDY_FILE)!r} is not a complete study file "
                         f"({type(e).__name__}: {e})") from None


def grow_study(directory: str | os.PathLike, files: Sequence[str]) -> StudyPlan:
    """The study in `directory` with the configurations of `files` added after its own,
    under the study's overrides and seeds; study.json rewritten. Raises StudyError."""
    plan = reopen_study(directory)
    if not files:
        raise StudyError("--add STUDY_DIR needs the settings files of the configurations to add")
    refuse_if_running(plan.directory)
    names = {c.name: c.file for c in plan.configurations}
    added = []
    for c in (configuration(f, plan.overrides) for f in files):
        if c.name in names:
            raise StudyError(f"the study already has a configuration named {c.name!r} "
                             f"({names[c.name]}); a configuration's name is its file's stem")
        names[c.name] = c.file
        added.append(c)
    grown = dataclasses.replace(plan, configurations=plan.configurations + tuple(added))
    check_budget_sources(grown.configurations)
    try:
        atomic_write_json(grown.directory / STUDY_FILE, grown.to_json())
    except OSError as e:
        raise StudyError(f"study directory {str(grown.directory)!r} cannot be written: "
                         f"{e.strerror or e}") from None
    return grown


@contextmanager
def running(directory: Path) -> Iterator[None]:
    """Holds the study for this process while it runs: a second process on the same study
    would resume the same runs at once. A lock whose process is gone is taken over."""
    path = directory / LOCK_FILE
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            refuse_if_running(directory)
            path.unlink(missing_ok=True)  # its process has ended
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        break
    else:
        raise StudyError(f"study {str(directory)!r}: {LOCK_FILE} cannot be taken")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def refuse_if_running(directory: Path) -> None:
    """StudyError when another live process runs the study in `directory`."""
    try:
        pid = int((directory / LOCK_FILE).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    if pid != os.getpid() and process_alive(pid):
        raise StudyError(f"study {str(directory)!r} is being run by process {pid}; wait for "
                         f"it to end or stop it (Ctrl-C) first")


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def open_study(plan: StudyPlan) -> StudyPlan:
    """A new study directory with its study.json, or the existing study the plan names when
    it records the same configurations and seeds (else StudyError). The plan, placed."""
    if plan.directory is None:
        try:
            placed = dataclasses.replace(plan, directory=create_run_dir(STUDIES_DIR, "study"))
        except RunDirError as e:
            raise StudyError(str(e).replace("run.runs_dir", "studies directory")) from None
    elif is_study(plan.directory):
        saved = read_study_file(plan.directory)
        check_agrees(plan, saved)
        return dataclasses.replace(plan, analysis_plan=saved.get("analysis_plan"))
    elif plan.directory.exists() and (not plan.directory.is_dir()
                                      or any(plan.directory.iterdir())):
        raise StudyError(f"--dir {str(plan.directory)!r} exists and is not a study directory "
                         f"(no {STUDY_FILE}); give a new or empty directory")
    else:
        placed = plan
    try:
        placed.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_json(placed.directory / STUDY_FILE, placed.to_json())
    except OSError as e:
        raise StudyError(f"study directory {str(placed.directory)!r} cannot be written: "
                         f"{e.strerror or e}") from None
    return placed


def check_agrees(plan: StudyPlan, saved: dict) -> None:
    """Refuses a command whose configurations or seeds are not those study.json records."""
    ours = json.loads(json.dumps(plan.to_json()))  # as it would read back
    theirs = {"names": [c.get("name") for c in saved.get("configurations", [])],
              "seeds": saved.get("seeds")}
    mine = {"names": [c["name"] for c in ours["configurations"]], "seeds": ours["seeds"]}
    where = f"study {str(plan.directory)!r}"
    if mine != theirs:
        raise StudyError(f"{where} has {_shape(theirs)} and this command {_shape(mine)}; "
                         f"rerun its own command, or 'ashem-engine study --resume "
                         f"{plan.directory}'")
    for new, old in zip(ours["configurations"], saved["configurations"]):
        key = first_difference(new["settings"], old.get("settings"))
        if key is not None:
            raise StudyError(f"{where}: configuration {new['name']!r} has other settings than "
                             f"its study.json (first at {key}); rerun its own command, or "
                             f"'ashem-engine study --resume {plan.directory}'")


def _shape(side: dict) -> str:
    return f"{', '.join(map(str, side['names'])) or 'no configuration'} × {side['seeds']} seeds"


def first_difference(a: Any, b: Any, at: str = "") -> Optional[str]:
    """The dotted key (stages by number) where two settings dicts first differ, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in [*a, *(k for k in b if k not in a)]:
            found = first_difference(a.get(key), b.get(key), f"{at}.{key}" if at else key)
            if found is not None:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b) and a and \
            all(isinstance(x, dict) for x in a):
        for i, (x, y) in enumerate(zip(a, b), start=1):
            found = first_difference(x, y, f"{at}.{i}")
            if found is not None:
                return found
        return None
    return None if a == b else (at or "settings")


# -- where the runs are ------------------------------------------------------------------

def seed_dir(directory: Path, config: str, seed: int) -> Path:
    return Path(directory) / "runs" / config / f"seed-{seed}"


def latest_run_dir(seed_directory: Path) -> Optional[Path]:
    """The newest run directory under a (configuration, seed) that got as far as its
    settings.json (one killed before that is left alone, and a new run started)."""
    if not seed_directory.is_dir():
        return None
    made = sorted(p for p in seed_directory.iterdir() if (p / SETTINGS_FILE).is_file())
    return made[-1] if made else None


def run_status(run_dir: Optional[Path]) -> Optional[str]:
    if run_dir is None:
        return None
    try:
        return json.loads((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))["status"]
    except (OSError, ValueError, KeyError, TypeError):
        return "running"  # no summary yet: killed early, or still being written


def study_runs(plan: StudyPlan) -> list[StudyRun]:
    """Every (configuration, seed) with its run directory and status, seed by seed: a study
    stopped early still compares every configuration over the same seeds."""
    out = []
    for index in range(plan.seeds):
        for config in plan.configurations:
            seed = config.seeds(plan.seeds)[index]
            where = seed_dir(plan.directory, config.name, seed)
            run_dir = latest_run_dir(where)
            out.append(StudyRun(config, seed, where, run_dir, run_status(run_dir)))
    return out
