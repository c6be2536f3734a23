"""Exit signals as a registry (exit_signals.SIGNALS), proved by the softmax entropy (DeeBERT),
which was added there alone: its score, its sweep series, its study figures and the app's
comparison screen."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ashem_app.comparison import CompareApp, comparison_of
from ashem_app.screens.compare import ComparisonScreen
from ashem_app.state import reduce_all
from ashem_engine.cascade import Cascade, route
from ashem_engine.costs import CostModel
from ashem_engine.data import Batches
from ashem_engine.exit_signals import SIGNALS, AtExit
from ashem_engine.model import EarlyExitLM
from ashem_engine.names import CLASSIFIER, SOFTMAX
from ashem_engine.run import run_ashem
from ashem_engine.settings import ModelSettings, SettingsError
from ashem_engine.study_table import FIGURES, meaning, run_figures
from ashem_engine.sweep import sweep
from engine_support import single_thread  # noqa: F401  (autouse fixture)
from tiny import tiny_settings

ENTROPY = "entropy"
ROOT = Path(__file__).resolve().parents[1]
CFG = ModelSettings(dim=16, heads=2, ffn_hidden=32)


def entropy_by_hand(logits: list[float]) -> float:
    z = sum(math.exp(x) for x in logits)
    return -sum(math.exp(x) / z * (x - math.log(z)) for x in logits)


def test_the_entropy_score_is_minus_the_softmax_entropy_computed_by_hand():
    g = torch.Generator().manual_seed(0)
    hidden, head = torch.randn(300, 16, generator=g), torch.randn(50, 16, generator=g)
    score = SIGNALS[ENTROPY].score(AtExit(hidden, None, head))  # 300 rows: several chunks
    by_hand = [-entropy_by_hand(row) for row in (hidden.double() @ head.double().T).tolist()]
    assert score.dtype == torch.float32 and score.shape == (300,)
    torch.testing.assert_close(score, torch.tensor(by_hand, dtype=torch.float32),
                               rtol=1e-5, atol=1e-5)
    flat = SIGNALS[ENTROPY].score(AtExit(torch.zeros(1, 16), None, head))
    assert float(flat) == pytest.approx(-math.log(50), rel=1e-6)  # uniform: the most unsure
    assert float(flat) < float(score.min())  # higher = surer = leaves earlier


def test_settings_accept_every_registered_signal_and_name_them_all_when_refusing(tmp_path):
    s = tiny_settings(tmp_path, f"evaluation.signals={json.dumps(list(SIGNALS))}")
    assert tuple(s.evaluation.signals) == (SOFTMAX, CLASSIFIER, ENTROPY)
    with pytest.raises(SettingsError, match="softmax, classifier, entropy"):
        tiny_settings(tmp_path, 'evaluation.signals=["margin"]')


def test_deciding_by_the_entropy_costs_what_max_softmax_costs():
    def costs(signal):
        return CostModel(CFG, 50, 8, (2, 4), ("sequence",), signal)
    for e in (0, 1):
        assert costs(ENTROPY).path(e) == costs(SOFTMAX).path(e)
    # the classifier's dim MACs, and no head thrown away by a token that goes deeper
    assert costs(CLASSIFIER).path(0) == costs(SOFTMAX).path(0) + CFG.dim
    assert costs(CLASSIFIER).path(1) == costs(SOFTMAX).path(1) - costs(SOFTMAX).head + CFG.dim


def test_the_real_early_exit_by_entropy_leaves_where_computing_everything_does():
    torch.manual_seed(0)
    model = EarlyExitLM(50, 4, CFG).eval()
    x, y = torch.randint(0, 50, (2, 4, 8)), torch.randint(0, 50, (2, 4, 8))
    with torch.no_grad():
        at_first = AtExit(model.hidden(x[0], stop=2).reshape(-1, 16), None, model.head.weight)
        median = float(SIGNALS[ENTROPY].score(at_first).median())
    cascade = Cascade.of([2, 4], [median]).signalled_by(ENTROPY)
    assert cascade.only_needed_is_exact
    every = route(model, cascade, x[0], y[0])
    needed = route(model, cascade, x[0], y[0], only_needed=True)
    assert 0 < int((every.exit_index == 0).sum()) < every.exit_index.numel()
    assert torch.equal(every.exit_index, needed.exit_index)
    torch.testing.assert_close(every.nll, needed.nll)


def test_each_exit_of_an_entropy_sweep_is_calibrated_on_the_tokens_the_entropy_sends_there():
    torch.manual_seed(0)
    model = EarlyExitLM(50, 6, CFG).eval()
    g = torch.Generator().manual_seed(1)
    mining, report = (Batches(torch.randint(0, 50, (3, 4, 8), generator=g),
                              torch.randint(0, 50, (3, 4, 8), generator=g)) for _ in range(2))
    (series,) = sweep(model, mining, report, Cascade.of([2, 4, 6], [0.0, 0.0]), [ENTROPY], 3)
    half = series["points"][1]  # quantile 0.5 at both exits: about a quarter reach the last
    assert all(math.isfinite(t) and t < 0 for t in half["thresholds"])
    assert 0.1 < half["exit_ratios"][1] and 0.1 < half["exit_ratios"][2] < 0.45


@pytest.fixture(scope="module")
def entropy_run(tmp_path_factory):
    """A tiny run whose sweep compares max-softmax and the softmax entropy."""
    events = []
    settings = tiny_settings(tmp_path_factory.mktemp("entropy"), "stages.1.max_epochs=1",
                             "stages.2.max_epochs=1", "evaluation.sweep_points=5",
                             'evaluation.signals=["softmax", "entropy"]')
    result = run_ashem(settings, [events.append])
    assert result.status == "finished", result.error
    return result.run_dir, events


def test_a_run_sweeps_the_entropy_into_sweep_json_and_its_event(entropy_run):
    run_dir, events = entropy_run
    sweep = json.loads((run_dir / "sweep.json").read_text())
    (entropy,) = [s for s in sweep["series"] if s["signal"] == ENTROPY]
    assert entropy["name"] == "ASHEM · softmax entropy" and entropy["kind"] == "sweep"
    assert [p["quantile"] for p in entropy["points"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    deep = [p["deep_ratio"] for p in entropy["points"]]
    assert deep[0] == 0.0 and deep[-1] == 1.0 and deep == sorted(deep)
    (softmax,) = [s for s in sweep["series"] if s["signal"] == SOFTMAX]
    assert entropy["points"][-1]["ppl"] == pytest.approx(softmax["points"][-1]["ppl"])
    (event,) = [e for e in events if e.kind == "SweepComputed"]
    assert [s["signal"] for s in event.series][:2] == [SOFTMAX, ENTROPY]
    assert not (run_dir / "exit-classifiers.pt").exists()  # nothing trained for either


def test_the_entropy_is_a_study_figure(entropy_run):
    run_dir, _ = entropy_run
    summary, sweep = (json.loads((run_dir / f).read_text())
                      for f in ("summary.json", "sweep.json"))
    figures = run_figures(summary, sweep)
    name = "sweep.entropy.q0.50.ppl_minus_stage_1_alone"
    assert name in [f.name for f in FIGURES] and "softmax entropy" in meaning(name)
    (entropy,) = [s for s in sweep["series"] if s["signal"] == ENTROPY]
    (alone,) = [s for s in sweep["series"] if s["name"].startswith("stage-1")]
    assert figures[name] == pytest.approx(entropy["points"][2]["ppl"] - alone["points"][0]["ppl"])
    assert not any(n.startswith("sweep.classifier.") for n in figures)  # not swept here


async def test_the_entropy_series_is_on_the_apps_comparison_screen(entropy_run):
    _, events = entropy_run
    app = CompareApp(comparison_of(reduce_all(events)))
    async with app.run_test(size=(120, 40)):
        assert isinstance(app.screen, ComparisonScreen)
        table = app.screen.query_one("#compare-table")
        labels = [table.get_row_at(i)[0].plain for i in range(table.row_count)]
        assert sum(label.endswith("ASHEM · softmax entropy") for label in labels) == 5


def test_the_entropy_signal_is_named_in_the_registry_alone():
    modules = [*(ROOT / "ashem_engine").glob("*.py"), *(ROOT / "ashem_app").rglob("*.py")]
    naming = [m.name for m in modules if f'"{ENTROPY}"' in m.read_text(encoding="utf-8")]
    assert naming == ["exit_signals.py"]
