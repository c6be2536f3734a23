"""Sweeps for the comparison screen, and the app of `ashem --compare` (no run, no dashboard).

- `run_sweep(view)`: the shown run's latest `SweepComputed` as a sweep dict (the shape of a
  sweep.json), or None before it arrives;
- `load_sweeps(dirs)`: the sweeps of `--compare` run directories, and of study directories
  one per configuration, its points the means over seeds with their 95 % intervals
  (`ashem_engine.compare.study_sweeps`); anything that cannot be compared raises
  `ComparisonError` with a one-line message;
- `comparison_of(view, others)`: `ashem_engine.compare.combine` of both, the one authority on
  labels and Pareto flags, and under "curves" the runs' validation curves for the curves view:
  the shown run's from its EpochEnded events, the others' as `load_sweeps` read them
  (`sweep["curve"]`: `ashem_engine.study_curves`, a study configuration's the mean over seeds
  per epoch, and under `curve["compute"]` its best-so-far curve against training MACs with
  the 95 % band, `ashem_engine.compare.study_compute_bands`). Nothing is computed here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from textual.app import App
from textual.screen import Screen

from ashem_engine.compare import (ComparisonError, combine, read_compared,
                                  study_compute_bands)
from ashem_engine.rundir import SWEEP_FILE
from ashem_engine.study import is_study
from ashem_engine.study_curves import curve_of, run_curve, study_curves

from . import keys
from .screens.compare import ComparisonScreen
from .screens.help import HelpScreen
from .state import RunView

__all__ = ["CompareApp", "ComparisonError", "comparison_of", "load_sweeps", "run_sweep"]


def protocol(settings: Optional[dict]) -> dict:
    """The run's protocol as its sweep.json states it, read from its settings (RunStarted)."""
    settings = settings or {}
    evaluation = settings.get("evaluation", {})
    later = [st for st in settings.get("stages", [])[1:] if isinstance(st, dict)]
    return {"mining_split": settings.get("mining", {}).get("split"),
            "evaluation_split": evaluation.get("split"),
            "inference": evaluation.get("inference"),
            "contexts": [st.get("context") for st in later],
            "freeze_head": [st.get("freeze_head") for st in later]}


def run_sweep(view: RunView) -> Optional[dict]:
    event = view.sweep
    if event is None:
        return None
    return {"name": view.name or "this run", "split": event.split, "tokens": event.tokens,
            "plain_macs_per_token": event.plain_macs_per_token,
            "protocol": protocol(view.started.settings if view.started else None),
            "series": event.series}


def _combined(sweeps: Sequence[dict]) -> dict:
    try:
        return combine(sweeps)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        names = ", ".join(str(s.get("name", "?")) for s in sweeps if isinstance(s, dict))
        raise ComparisonError(f"the sweep of {names or 'a run'} is not complete "
                              f"({type(err).__name__}: {err})") from None


def load_sweeps(dirs: Sequence[str]) -> list[dict]:
    """Each run directory's sweep.json (or each study's configurations), checked, each with
    its validation curve under "curve" (None: no events.jsonl; a study configuration's with
    its band against training MACs under "compute"). A sweep without a name takes the
    directory's."""
    sweeps = []
    for given in dirs:
        path = Path(given)
        path = path if path.is_file() else path / SWEEP_FILE
        compared = read_compared(given)  # a run directory, its sweep.json, or a study
        study = _study_curves(given) if is_study(given) else None
        for sweep in compared:
            sweep.setdefault("name", path.resolve().parent.name)
            sweep["curve"] = study.get(sweep["name"]) if study is not None else \
                run_curve(path.parent, sweep["name"])
            sweeps.append(sweep)
    return sweeps


def _study_curves(study_dir: str) -> dict:
    """A study's curves by configuration: the engine's mean per epoch, and its band against
    training MACs under "compute"."""
    bands = study_compute_bands(study_dir)
    return {c["name"]: {**c, "compute": bands.get(c["name"])} for c in study_curves(study_dir)}


def comparison_of(view: Optional[RunView], others: Sequence[dict] = ()) -> dict:
    own = run_sweep(view) if view is not None else None
    comparison = _combined([own, *others] if own is not None else list(others))
    own_curve = [curve_of(view.name or "this run", view.epochs)] if view is not None else []
    comparison["curves"] = [c for c in (*own_curve, *(s.get("curve") for s in others))
                            if c is not None and c["points"]]
    return comparison


class CompareApp(App[int]):
    """`ashem --compare RUN_DIR ...`: only the comparison screen; closing it quits."""

    CSS_PATH = Path(__file__).with_name("app.tcss")
    TITLE = "ashem · compare"
    BINDINGS = [keys.by_id("ashem.help").binding()]

    def __init__(self, comparison: dict) -> None:
        super().__init__()
        self.comparison = comparison

    def get_default_screen(self) -> Screen:
        return ComparisonScreen(self.comparison)

    def action_show_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())
