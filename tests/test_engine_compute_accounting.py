"""Every pass counted once (docs/REPRODUCTION.md, "How compute is counted"): summary.json's
compute_macs charges the token context's stored hidden states as the part of the mining pass
that made them (HardExamplesCollected.state_macs), as the sequence context's own pass for its
states is charged, while the older fields keep their values."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from rich.console import Console

from ashem_app import fmt
from ashem_app.describe import describe
from ashem_app.screens.inspect import evaluation_figures, hard_figures
from ashem_app.state import reduce_all
from engine_support import single_thread  # noqa: F401  (autouse fixture)
from ashem_engine import events as ev
from ashem_engine.costs import CostModel
from ashem_engine.model import block_macs_per_token, head_macs_per_token
from ashem_engine.names import SEQUENCE, TOKEN
from ashem_engine.study_table import FIGURES, meaning, run_figures, shown
from test_engine_training_macs import CFG, FAST, VOCAB, of, recorded_run

ROOT = Path(__file__).resolve().parent.parent


def test_a_cascades_blocks_by_hand():
    """blocks(): every block in its mode, no head; computing everything adds a head per exit."""
    b8, b1 = block_macs_per_token(CFG, 8), block_macs_per_token(CFG, 1)
    costs = CostModel(CFG, VOCAB, 8, (2, 4, 6), (TOKEN, SEQUENCE))
    assert costs.blocks() == 2 * b8 + 2 * b1 + 2 * b8
    assert costs.compute_everything() == costs.blocks() + 3 * head_macs_per_token(CFG, VOCAB)
    assert CostModel(CFG, VOCAB, 8, (2,), ()).blocks() == 2 * b8


def finished(tmp_path_factory, name: str, *extra: str):
    settings, events, result = recorded_run(tmp_path_factory.mktemp(name), *FAST, *extra)
    assert result.status == "finished", result.error
    return settings, events, result.summary


@pytest.fixture(scope="module")
def token_run(tmp_path_factory):
    return finished(tmp_path_factory, "token")  # the default: stage 2 in the token context


@pytest.fixture(scope="module")
def sequence_run(tmp_path_factory):
    return finished(tmp_path_factory, "sequence", "stages.2.context=sequence")


def figures(settings, events) -> dict:
    """What a hand count needs: the mining split's tokens, a block at the run's length, the
    head, stage 1's layers."""
    (started,) = of(events, ev.RunStarted)
    assert settings.mining.split == "validation"
    return {"tokens": started.val_tokens, "layers": settings.stages[0].layers,
            "block": block_macs_per_token(settings.model, settings.data.seq_len),
            "head": head_macs_per_token(settings.model, started.vocab_size)}


def test_the_token_contexts_stored_states_are_charged_as_training(token_run):
    settings, events, summary = token_run
    f, (mined,) = figures(settings, events), of(events, ev.HardExamplesCollected)
    states = f["tokens"] * f["layers"] * f["block"]  # the lower blocks over the mining split
    assert mined.state_macs == states > 0
    assert mined.selection_macs - mined.state_macs == f["tokens"] * f["head"]  # it selects
    charged = summary["compute_macs"]
    assert charged["training"] == summary["training_macs"]["total"] + states
    assert charged["selection"] == summary["selection_macs"]["total"] - states
    assert charged["total"] == charged["training"] + charged["selection"]
    assert charged["mining"] == [{"stage": 1, "states": states,
                                  "selection": f["tokens"] * f["head"]}]
    assert [r["training"] for r in charged["stages"]] == summary["training_macs"]["stages"]
    assert charged["rule"].startswith("every pass counted once")
    assert summary["mining"][0]["state_macs"] == states


def test_the_sequence_context_charges_its_own_pass_and_no_stored_states(sequence_run):
    settings, events, summary = sequence_run
    f, (mined,) = figures(settings, events), of(events, ev.HardExamplesCollected)
    assert mined.state_macs == 0.0
    first, second, *_ = [e for e in of(events, ev.EpochEnded) if e.stage == 2]
    assert first.training_macs - second.training_macs == \
        f["tokens"] * (f["layers"] * f["block"] + f["head"])  # its setup pass, in training
    charged = summary["compute_macs"]
    assert charged["training"] == summary["training_macs"]["total"]
    assert charged["selection"] == summary["selection_macs"]["total"]
    assert charged["mining"] == [{"stage": 1, "states": 0.0,
                                  "selection": mined.selection_macs}]


def preparation(events, summary) -> float:
    """What a run charges to training for stage 2 beyond its steps: compute_macs' training
    less stage 1's and less stage 2's epochs of steps (an epoch after its first is steps only)."""
    stage_two = [e for e in of(events, ev.EpochEnded) if e.stage == 2]
    assert len(stage_two) >= 2
    stage_one = summary["training_macs"]["stages"][0]
    return summary["compute_macs"]["training"] - stage_one - \
        len(stage_two) * stage_two[-1].training_macs


def test_both_contexts_charge_the_states_their_stage_trains_on(token_run, sequence_run):
    """The same run in both contexts: past their steps, both pay the lower blocks over the
    mining split; the sequence context's pass, an exit pass, pays the lower exit's head too."""
    settings, events, summary = token_run
    f = figures(settings, events)
    assert preparation(events, summary) == f["tokens"] * f["layers"] * f["block"]
    _, seq_events, seq_summary = sequence_run
    assert preparation(seq_events, seq_summary) == \
        preparation(events, summary) + f["tokens"] * f["head"]
    assert summary["training_macs"]["stages"][0] == seq_summary["training_macs"]["stages"][0]


def test_the_existing_fields_keep_their_values(token_run):
    """The default (token context) run's older MACs fields as the formulas before stored
    states were charged give them: stage 2's steps alone, the whole mining pass as selection."""
    settings, events, summary = token_run
    f, (mined,) = figures(settings, events), of(events, ev.HardExamplesCollected)
    (started,) = of(events, ev.RunStarted)
    d, block1 = settings.model.dim, block_macs_per_token(settings.model, 1)
    block, head = f["block"], f["head"]
    per_epoch = {1: started.train_tokens * 3 * (2 * block + head),
                 2: mined.count * (2 * block1 + head + (2 * block1 - 3 * d * d) + 2 * block1
                                   + 2 * head)}
    assert mined.selection_macs == f["tokens"] * (f["layers"] * block + head)
    run_total = 0.0
    for e in of(events, ev.EpochEnded):
        run_total += e.training_macs
        assert e.training_macs == per_epoch[e.stage]
        assert e.run_training_macs == run_total
    ended = {e.stage: e for e in of(events, ev.StageEnded)}
    training = [ended[1].training_macs, ended[2].training_macs]
    selection = [ended[1].selection_macs, ended[2].selection_macs]
    assert summary["training_macs"] == {"stages": training, "total": sum(training)}
    assert summary["selection_macs"] == {"stages": selection, "mining": [mined.selection_macs],
                                         "total": sum(selection) + mined.selection_macs}


def test_the_study_table_has_the_charged_rows(token_run):
    _, _, summary = token_run
    charged, found = summary["compute_macs"], run_figures(summary, {})
    assert found["charged_training_macs"] == charged["training"]
    assert found["selection_macs"] == charged["selection"]
    assert found["total_macs"] == charged["total"]
    assert found["training_macs"] == summary["training_macs"]["total"]  # kept beside them
    names = [figure.name for figure in FIGURES]
    assert names.index("training_macs") < names.index("charged_training_macs") \
        < names.index("selection_macs") < names.index("total_macs")
    assert "stored states" in meaning("charged_training_macs")
    assert shown("total_macs", 2.5e12) == shown("selection_macs", 2.5e12) == "2.5 T"
    assert "total_macs" not in run_figures({**summary, "compute_macs": None}, {})  # older runs


def study_results():
    spec = importlib.util.spec_from_file_location("study_results",
                                                  ROOT / "bench" / "study_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_results_table_shows_selection_and_total_beside_training():
    def figure(value):
        return {"mean": value, "half_width": None, "n": 1, "values": [{"seed": 1, "value": value}]}
    table = {"configurations": [{"name": "a", "figures": {
        "training_macs": figure(3e12), "selection_macs": figure(0.5e12),
        "total_macs": figure(4e12)}}]}
    header, _, row, *_ = study_results().tables(table).splitlines()
    assert "| training TMACs | selection TMACs | total TMACs |" in header
    assert "| 3.0 (n=1) | 0.5 (n=1) | 4.0 (n=1) |" in row


def rendered(table) -> list[str]:
    console = Console(width=120, record=True)
    console.print(table)
    return [" ".join(line.split()) for line in console.export_text().splitlines()]


def test_the_app_shows_the_charge_as_the_events_and_summary_give_it(token_run, sequence_run):
    _, events, summary = token_run
    view, (mined,) = reduce_all(events), of(events, ev.HardExamplesCollected)
    assert f"mining pass {fmt.macs(mined.selection_macs)} · states " \
        f"{fmt.macs(mined.state_macs)} (training)" in rendered(hard_figures(view, 1))
    lines = rendered(evaluation_figures(view))
    for key in ("training", "selection", "total"):
        assert f"run {key} {fmt.macs(summary['compute_macs'][key])}" in lines
    ended = of(events, ev.StageEnded)[0]
    assert f"trained {fmt.macs(ended.training_macs)}, selection " \
        f"{fmt.macs(ended.selection_macs)}" in describe(ended).plain
    _, seq_events, _ = sequence_run  # no stored states: the mining pass alone
    (seq_mined,) = of(seq_events, ev.HardExamplesCollected)
    assert f"mining pass {fmt.macs(seq_mined.selection_macs)}" in \
        rendered(hard_figures(reduce_all(seq_events), 1))
