"""SDS: N-stage training and N-exit inference (N = 3 on the tiny synthetic set-up)."""
from __future__ import annotations

import pytest
import torch

from ashem_engine import events as ev
from ashem_engine.head import exit_stats
from ashem_engine.model import EarlyExitLM
from ashem_engine.costs import spec_cost
from ashem_engine.run import run_ashem
from ashem_engine.rundir import load_checkpoint
from tiny import tiny_corpus, tiny_settings
from engine_support import finished_tiny_run

THIRD_STAGE = ["stages.3.layers=6", "stages.3.lr=1e-3", "stages.3.hard_ratio=0.2",
               "stages.3.context=token", "stages.3.max_epochs=2", "stages.3.patience=2"]


def comparable(events):
    out = []
    for e in events:
        if e.kind in ev.MACHINE_EVENTS:
            continue
        d = ev.without_timing(e)
        for key in ("run_dir", "checkpoint", "settings", "stages", "summary", *ev.MACHINE_FIELDS):
            d.pop(key, None)
        out.append(d)
    return out


@pytest.fixture(scope="module")
def three_stage(tmp_path_factory):
    return finished_tiny_run(tmp_path_factory.mktemp("sds"), *THIRD_STAGE)


def test_three_stages_run_end_to_end(three_stage):
    _, events, result = three_stage
    kinds = [e.kind for e in events]
    assert [e.stage for e in events if e.kind == "StageStarted"] == [1, 2, 3]
    assert [e.stage for e in events if e.kind == "ThresholdComputed"] == [1, 2]
    assert [(e.exit_layer, e.target_ratio) for e in events
            if e.kind == "ThresholdComputed"] == [(2, 0.5), (4, 0.2)]
    (final,) = [e for e in events if e.kind == "Evaluated"]
    assert final.exit_layers == [2, 4, 6] and len(final.thresholds) == 2
    assert len(final.exit_ratios) == 3 and sum(final.exit_ratios) == pytest.approx(1.0)
    assert final.deep_ratio == pytest.approx(1 - final.exit_ratios[0])
    assert kinds[-1] == "RunFinished"
    assert [s["layers"] for s in result.summary["stages"]] == [2, 4, 6]
    started = [e for e in events if e.kind == "StageStarted"]
    # each later stage trains only its two new blocks (and the shared head)
    assert started[2].trainable_params == started[1].trainable_params


def test_each_stage_freezes_everything_below_it(three_stage):
    _, _, result = three_stage
    ck = [load_checkpoint(result.run_dir / f"stage-{n}-best.pt")["model"] for n in (1, 2, 3)]
    frozen_after = {2: 2, 3: 4}  # stage -> blocks frozen in it
    for stage, blocks in frozen_after.items():
        before, after = ck[stage - 2], ck[stage - 1]
        names = ["embedding.weight"] + [k for k in before if k.startswith("layers.")
                                        and int(k.split(".")[1]) < blocks]
        for name in names:
            assert torch.equal(before[name], after[name]), (stage, name)
        assert not torch.equal(before["head.weight"], after["head.weight"])  # head trains


def test_adding_a_stage_leaves_the_first_two_unchanged(three_stage, tmp_path):
    settings3, events3, _ = three_stage
    settings2 = tiny_settings(tmp_path)
    events2 = []
    run_ashem(settings2, [events2.append], corpus=tiny_corpus(settings2))

    def until_stage_two_ends(events):
        out = []
        for e in events:
            out.append(e)
            if e.kind == "StageEnded" and e.stage == 2:
                return out
        raise AssertionError("no StageEnded(2)")

    assert comparable(until_stage_two_ends(events3)[1:]) == \
        comparable(until_stage_two_ends(events2)[1:])


def test_second_threshold_is_a_quantile_over_the_tokens_that_reach_exit_two(three_stage):
    settings, events, result = three_stage
    (thr2,) = [e for e in events if e.kind == "ThresholdComputed" and e.stage == 2]
    (thr1,) = [e for e in events if e.kind == "ThresholdComputed" and e.stage == 1]
    corpus = tiny_corpus(settings)
    model = EarlyExitLM(len(corpus.vocab), 4, settings.model)
    model.load_state_dict(load_checkpoint(result.run_dir / "stage-2-best.pt")["model"])
    val = corpus.batches["validation"]
    with torch.no_grad():
        h2 = torch.cat([model.hidden(x, stop=2).reshape(-1, settings.model.dim) for x in val.x])
        h4 = torch.cat([model.hidden(x, stop=4).reshape(-1, settings.model.dim) for x in val.x])
    y = val.y.reshape(-1)
    conf2 = exit_stats(h2, model.head.weight, y).confidence
    conf4 = exit_stats(h4, model.head.weight, y).confidence
    reaching = conf2 < thr1.threshold
    assert thr2.tokens == int(reaching.sum()) < y.numel()
    expected = torch.quantile(conf4[reaching], 0.2).item()
    assert thr2.threshold == pytest.approx(expected, rel=1e-6)
    (hard2,) = [e for e in events if e.kind == "HardExamplesCollected" and e.stage == 2]
    assert hard2.count == int((reaching & (conf4 < thr2.threshold)).sum())


def test_spec_cost_generalises_to_three_exits():
    # 50 tokens leave at layer 2, 30 at layer 4, 20 at layer 6: (100 + 120 + 120) / 600
    assert spec_cost([50, 30, 20], [2, 4, 6]) == pytest.approx(340 / 600)
