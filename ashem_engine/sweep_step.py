"""The sweep step: quality against honest cost over a range of exit thresholds, for the
signals of evaluation.signals, beside the run's own point and the stage-1 model alone; all on
the report split, calibrated on the mining split. Writes sweep.json and emits SweepComputed."""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import calls
from . import events as ev
from .compare import SWEEP_FILE, mark_pareto
from .costs import CLASSIFIER
from .rundir import atomic_torch_save, atomic_write_json, load_checkpoint

if TYPE_CHECKING:
    from .steps import Pipeline, RunState


def run_sweep(pipe: Pipeline, state: RunState) -> None:
    s, final = pipe.settings, state.final
    report = pipe.batches(s.evaluation.split)
    model, exit_layers = state.model, state.exit_layers
    modes = pipe.modes(len(s.stages))
    costs = calls.cost_model(model.cfg, model.vocab_size, report.x.shape[-1],
                             tuple(exit_layers), modes)
    plain = costs.plain()
    if len(exit_layers) > 1:
        series = [*_signal_series(pipe, state, modes),
                  calls.one_point_series("ASHEM · as run", final, costs, plain,
                                         exit_layers[-1]),
                  _first_stage_alone(pipe, report, plain, exit_layers[-1])]
    else:
        series = [calls.one_point_series(f"plain model ({exit_layers[0]} layers)", final,
                                         costs, plain, exit_layers[0])]
    mark_pareto([p for x in series for p in x["points"]])
    pipe.emit(ev.SweepComputed(split=s.evaluation.split, tokens=final.tokens,
                               plain_macs_per_token=plain, series=series))
    _write_sweep_json(pipe, series, plain, final.tokens)


def _signal_series(pipe: Pipeline, state: RunState, modes: tuple) -> list[dict]:
    """One series per signal; the exit classifiers are trained first if one is the
    classifier, and kept in exit-classifiers.pt."""
    s = pipe.settings
    mining, report = pipe.batches(s.mining.split), pipe.batches(s.evaluation.split)
    classifiers = None
    if CLASSIFIER in s.evaluation.signals:
        classifiers = calls.exit_classifiers(state.model, mining, state.exit_layers,
                                             state.thresholds, modes, s.run.seed, pipe.check)
        atomic_torch_save(pipe.run_dir / "exit-classifiers.pt",
                          {"classifiers": [c.state_dict() for c in classifiers]})
    return calls.threshold_sweep(state.model, mining, report, state.exit_layers, modes,
                                 s.evaluation.signals, s.evaluation.sweep_points,
                                 classifiers, pipe.check)


def _first_stage_alone(pipe: Pipeline, report, plain: float, deepest: int) -> dict:
    """The stage-1 model's best checkpoint on its own, as a baseline point."""
    layers = pipe.settings.stages[0].layers
    base = pipe.new_model(layers).eval()
    base.load_state_dict(load_checkpoint(pipe.best_checkpoint(1))["model"])
    alone = calls.routed_evaluation(base, report, [layers], [], pipe.check)
    costs = calls.cost_model(base.cfg, base.vocab_size, report.x.shape[-1], (layers,), ())
    return calls.one_point_series(f"stage-1 model ({layers} layers)", alone, costs, plain,
                                  deepest)


def _write_sweep_json(pipe: Pipeline, series: list, plain: float, tokens: int) -> None:
    s = pipe.settings
    protocol = {"mining_split": s.mining.split, "evaluation_split": s.evaluation.split,
                "inference": s.evaluation.inference,
                "contexts": [st.context for st in s.stages[1:]],
                "freeze_head": [st.freeze_head for st in s.stages[1:]]}
    atomic_write_json(pipe.run_dir / SWEEP_FILE, {
        "name": s.run.name, "run_dir": str(pipe.run_dir), "protocol": protocol,
        "split": s.evaluation.split, "tokens": tokens, "plain_macs_per_token": plain,
        "series": series})
