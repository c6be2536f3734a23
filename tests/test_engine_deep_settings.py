"""What deeper baselines need, as settings: pre-norm blocks with a final norm at every exit
(model.norm), a warm-up and cosine learning-rate schedule ([optimizer]), and a training-compute
budget (run.training_macs_budget). The defaults are the spec's model and arithmetic."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from ashem_engine import events as ev
from ashem_engine.cascade import Cascade, route
from ashem_engine.control import RunControl
from ashem_engine.costs import TrainingStep, training_macs
from ashem_engine.data import Batches
from ashem_engine.lr_schedule import LrSchedule
from ashem_engine.model import Block, EarlyExitLM
from ashem_engine.names import PROPAGATED
from ashem_engine.rundir import load_checkpoint
from ashem_engine.run import resume_ashem, run_ashem
from ashem_engine.settings import (ModelSettings, OptimizerSettings, SettingsError,
                                   load_settings)
from ashem_engine.stages import SequenceTask, make_optimizer, train_epoch
from engine_support import finished_tiny_run, single_thread, without_keys  # noqa: F401  (autouse fixture)
from tiny import tiny_corpus, tiny_settings

PRE = ModelSettings(dim=16, heads=2, ffn_hidden=32, norm="pre")
POST = ModelSettings(dim=16, heads=2, ffn_hidden=32)
VOCAB = 40


def pre_model(layers: int = 4, seed: int = 0) -> EarlyExitLM:
    """A pre-norm model whose final norm is not the identity's ones (so tests can see it)."""
    torch.manual_seed(seed)
    model = EarlyExitLM(VOCAB, layers, PRE).eval()
    with torch.no_grad():
        model.exit_norm.weight.uniform_(0.5, 1.5)
    return model


def events_of(result_events, kind):
    return [e for e in result_events if e.kind == kind]


def figures(summary: dict) -> str:
    """A summary's stage histories, mining and final report without clocks, hosts and paths,
    as text (so that a nan train PPL compares equal to itself)."""
    drop = ev.TIMING_FIELDS | ev.MACHINE_FIELDS | {"checkpoint", "run_dir"}
    kept = {k: summary[k] for k in ("stages", "mining", "final")}
    return json.dumps(without_keys(kept, drop), sort_keys=True)


# -- settings ----------------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    ("model.norm=mid", "model.norm = 'mid': allowed: post"),
    ("optimizer.schedule=linear", "optimizer.schedule = 'linear': allowed: constant, cosine"),
    ("optimizer.warmup_steps=-1", "optimizer.warmup_steps = -1: must be >= 0"),
    ("optimizer.warmup_steps=1.5", "optimizer.warmup_steps = 1.5: must be an integer"),
    ("optimizer.decay_epochs=-1", "optimizer.decay_epochs = -1: must be >= 0"),
    ("optimizer.min_lr_ratio=1.5", "optimizer.min_lr_ratio = 1.5: must be in [0, 1]"),
    ("optimizer.min_lr_ratio=-0.1", "optimizer.min_lr_ratio = -0.1: must be in [0, 1]"),
    ("run.training_macs_budget=-1", "run.training_macs_budget = -1.0: must be a number of MACs"),
    ("run.training_macs_budget=inf", "run.training_macs_budget = inf: must be a number of MACs"),
])
def test_bad_values_of_the_new_keys_are_refused_in_one_line(override, message):
    with pytest.raises(SettingsError) as info:
        load_settings(None, [override])
    text = str(info.value)
    assert text.startswith(message) and "\n" not in text


def test_the_defaults_are_the_spec_model_and_a_constant_rate():
    s = load_settings(None)
    assert s.model.norm == "post"
    assert (s.optimizer.schedule, s.optimizer.warmup_steps, s.optimizer.decay_epochs,
            s.optimizer.min_lr_ratio) == ("constant", 0, 0, 0.0)
    assert s.run.training_macs_budget == 0.0
    assert load_settings(None, ["model.norm=pre", "optimizer.schedule=cosine",
                                "optimizer.warmup_steps=100", "optimizer.decay_epochs=5",
                                "optimizer.min_lr_ratio=0.1",
                                "run.training_macs_budget=1e15"]).model.norm == "pre"


# -- the model ---------------------------------------------------------------------------------

def test_a_post_norm_model_keeps_its_weights_and_random_stream():
    torch.manual_seed(3)
    post = EarlyExitLM(VOCAB, 2, POST)
    torch.manual_seed(3)
    pre = EarlyExitLM(VOCAB, 2, PRE)
    assert post.exit_norm is None and not any("exit_norm" in k for k in post.state_dict())
    assert set(pre.state_dict()) == set(post.state_dict()) | {"exit_norm.weight"}
    for key, value in post.state_dict().items():  # the final norm draws nothing
        assert torch.equal(pre.state_dict()[key], value), key
    h = torch.randn(5, 16)
    assert post.to_head(h) is h


def rms_by_hand(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def test_a_pre_norm_block_adds_each_sublayer_of_the_normed_input():
    torch.manual_seed(1)
    block = Block(PRE)
    with torch.no_grad():
        block.norm1.weight.uniform_(0.5, 1.5)
        block.norm2.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 16)
    mid = x + block.attn(rms_by_hand(x, block.norm1.weight, PRE.norm_eps))
    expected = mid + block.ffn(rms_by_hand(mid, block.norm2.weight, PRE.norm_eps))
    torch.testing.assert_close(block(x), expected, atol=1e-6, rtol=1e-5)
    post = Block(POST)
    post.load_state_dict(block.state_dict())
    assert not torch.allclose(post(x), expected, atol=1e-3)  # the two forms differ


def test_the_post_norm_block_is_the_spec_block_bit_for_bit():
    torch.manual_seed(2)
    block, x = Block(POST), torch.randn(2, 3, 16)
    mid = block.norm1(x + block.attn(x))
    assert torch.equal(block(x), block.norm2(mid + block.ffn(mid)))


def test_every_exit_reads_the_final_norm():
    model = pre_model()
    x, y = torch.randint(0, VOCAB, (3, 8)), torch.randint(0, VOCAB, (3, 8))
    cascade = Cascade.of([2, 4], [0.05])
    routed = route(model, cascade, x, y, every_exit=True)
    with torch.no_grad():
        for layer, passed in zip((2, 4), routed.every_exit):
            raw = model.hidden(x, stop=layer).reshape(-1, 16)
            assert torch.equal(passed.hidden, raw)  # kept raw, for the layers above
            logits = model.head(rms_by_hand(raw, model.exit_norm.weight, PRE.norm_eps))
            nll = F.cross_entropy(logits, y.reshape(-1), reduction="none")
            torch.testing.assert_close(passed.stats.nll, nll, atol=1e-5, rtol=1e-5)
            assert not torch.allclose(passed.stats.nll, F.cross_entropy(
                model.head(raw), y.reshape(-1), reduction="none"), atol=1e-3)
        torch.testing.assert_close(model(x), model.head(model.exit_norm(model.hidden(x))))
    assert torch.bincount(routed.exit_index, minlength=2).min() > 0
    chosen = F.cross_entropy(model.head(routed.hidden), y.reshape(-1), reduction="none")
    torch.testing.assert_close(routed.nll, chosen.detach(), atol=1e-5, rtol=1e-5)


def test_a_pre_norm_real_exit_equals_computing_everything():
    """The propagated mode's sparse block, pre-norm: keys and values of normed states."""
    model = pre_model(seed=4)
    x, y = torch.randint(0, VOCAB, (4, 8)), torch.randint(0, VOCAB, (4, 8))
    first = route(model, Cascade.of([2]), x, y, every_exit=True).every_exit[0]
    cascade = Cascade.of([2, 4], [float(first.stats.confidence.median())], (PROPAGATED,))
    full = route(model, cascade, x, y)
    real = route(model, cascade, x, y, only_needed=True)
    assert torch.equal(full.exit_index, real.exit_index)
    assert torch.bincount(real.exit_index, minlength=2).min() > 0
    torch.testing.assert_close(real.nll, full.nll, atol=1e-5, rtol=1e-5)


def test_the_training_loss_goes_through_the_final_norm():
    model = pre_model(2)
    g = torch.Generator().manual_seed(5)
    train = Batches(torch.randint(0, VOCAB, (2, 3, 8), generator=g),
                    torch.randint(0, VOCAB, (2, 3, 8), generator=g))
    task = SequenceTask(model, train, None, Cascade.of([2]))
    expected = F.cross_entropy(model(train.x[1]).reshape(-1, VOCAB), train.y[1].reshape(-1))
    loss = task.loss(1)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    loss.backward()
    assert model.exit_norm.weight.grad is not None
    assert model.exit_norm.weight.grad.abs().sum() > 0


def test_grow_copies_the_final_norm_and_freeze_head_freezes_it():
    model = pre_model(2)
    grown = model.grow(4)
    assert torch.equal(grown.exit_norm.weight, model.exit_norm.weight)
    grown.freeze_lower(2, freeze_head=True)
    assert not grown.exit_norm.weight.requires_grad and not grown.head.weight.requires_grad
    assert all(p.requires_grad for p in grown.layers[2:].parameters())
    trained = model.grow(4)
    trained.freeze_lower(2, freeze_head=False)
    assert trained.exit_norm.weight.requires_grad and trained.head.weight.requires_grad
    params = {id(p) for g in make_optimizer(trained, 1e-3, OptimizerSettings()).param_groups
              for p in g["params"]}
    assert id(trained.exit_norm.weight) in params


@pytest.mark.parametrize("extra, head_frozen", [
    ((), False),
    (("stages.2.context=sequence", "stages.2.freeze_head=true",
      "evaluation.inference=as_trained", "mining.split=train"), True),
])
def test_a_two_stage_pre_norm_run_finishes_with_finite_figures(tmp_path, extra, head_frozen):
    settings = tiny_settings(tmp_path, "model.norm=pre", "stages.1.max_epochs=2",
                             "stages.2.max_epochs=2", "evaluation.sweep_points=3", *extra)
    result = run_ashem(settings, corpus=tiny_corpus(settings))
    assert result.status == "finished", result.error
    summary = result.summary
    assert all(math.isfinite(s["best_val_ppl"]) for s in summary["stages"])
    assert math.isfinite(summary["final"]["ppl"]) and summary["final"]["ppl"] > 1
    one = load_checkpoint(result.run_dir / "stage-1-best.pt")["model"]["exit_norm.weight"]
    two = load_checkpoint(result.run_dir / "stage-2-best.pt")["model"]["exit_norm.weight"]
    assert torch.equal(one, two) == head_frozen  # stage 2 trains it with the head, or not


# -- the learning-rate schedule ------------------------------------------------------------------

def schedule(**keys) -> LrSchedule:
    opt = OptimizerSettings(**{"schedule": "cosine", **keys})
    return LrSchedule.of_stage(1e-3, opt, max_epochs=4, steps_per_epoch=10)


def test_the_schedule_by_hand():
    s = schedule(warmup_steps=4, decay_epochs=2, min_lr_ratio=0.1)  # floor at step 20
    assert [s.at(k) for k in range(4)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert s.at(4) == pytest.approx(1e-3)  # the cosine starts at lr after the warm-up
    assert s.at(12) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))  # half way: the mean
    assert s.at(20) == pytest.approx(1e-4) and s.at(39) == pytest.approx(1e-4)  # the floor
    assert s.at(19) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 15 / 16))))
    whole = schedule()  # decay_epochs 0: the stage's max_epochs (40 steps), no warm-up
    assert whole.at(0) == pytest.approx(1e-3) and whole.at(20) == pytest.approx(5e-4)
    assert whole.at(40) == 0.0
    warm = schedule(schedule="constant", warmup_steps=5)
    assert warm.at(1) == pytest.approx(4e-4) and warm.at(4) == warm.at(30) == 1e-3
    assert schedule(schedule="constant").in_epoch(1) is None  # the defaults: rate untouched
    assert s.in_epoch(2)(3) == s.at(13) and s.epoch_lr(2, 10) == s.at(19)
    assert s.epoch_lr(1, 0) == s.at(0)


def test_the_optimizer_steps_at_the_scheduled_rate():
    torch.manual_seed(0)
    model = EarlyExitLM(VOCAB, 2, POST)
    g = torch.Generator().manual_seed(6)
    train = Batches(torch.randint(0, VOCAB, (3, 2, 8), generator=g),
                    torch.randint(0, VOCAB, (3, 2, 8), generator=g))
    task = SequenceTask(model, train, None, Cascade.of([2]))
    optimizer = make_optimizer(model, 1e-3, OptimizerSettings())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rates = []

    def zero(b):
        rates.append(b)
        return 0.0
    train_epoch(1, 1, task, optimizer, OptimizerSettings(), RunControl(), lambda e: None, 100,
                lr_at=zero)
    assert rates == [0, 1, 2] and optimizer.param_groups[0]["lr"] == 0.0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    train_epoch(1, 2, task, optimizer, OptimizerSettings(), RunControl(), lambda e: None, 100,
                lr_at=lambda b: 1e-3)
    assert not torch.equal(before["head.weight"], model.head.weight)


COSINE = ("optimizer.schedule=cosine", "optimizer.warmup_steps=30", "optimizer.decay_epochs=2",
          "optimizer.min_lr_ratio=0.1", "stages.2.max_epochs=3", "stages.2.patience=3",
          "evaluation.sweep_points=3")


@pytest.fixture(scope="module")
def cosine_run(tmp_path_factory):
    return finished_tiny_run(tmp_path_factory.mktemp("cosine"), *COSINE)


def test_each_epoch_reports_its_last_steps_rate(cosine_run, plain_run):
    settings, events, _ = cosine_run
    first = [e for e in events_of(events, "EpochEnded")][0]
    plain_first = [e for e in events_of(plain_run[1], "EpochEnded")][0]
    assert plain_first.lr == settings.stages[0].lr > first.lr  # constant; decaying
    assert first.train_ppl != plain_first.train_ppl  # the warm-up's steps were slower
    starts = {e.stage: e for e in events_of(events, "StageStarted")}
    epochs = events_of(events, "EpochEnded")
    assert {e.stage for e in epochs} == {1, 2}
    for e in epochs:
        st, n = settings.stages[e.stage - 1], starts[e.stage].batches
        expected = LrSchedule.of_stage(st.lr, settings.optimizer, st.max_epochs, n).at(
            e.epoch * n - 1)
        assert e.lr == pytest.approx(expected)
    last_two = [e for e in epochs if e.stage == 2][-1]
    assert last_two.epoch == 3 and last_two.lr == pytest.approx(0.1 * settings.stages[1].lr)


def cancel_when(control: RunControl, predicate):
    def sink(event):
        if predicate(event):
            control.cancel()
    return sink


@pytest.mark.parametrize("where", ["stage1-epoch2-mid", "stage2-epoch1"])
def test_a_cancelled_and_resumed_cosine_run_equals_the_straight_run(cosine_run, where):
    settings, _, straight = cosine_run
    predicates = {
        "stage1-epoch2-mid": lambda e: isinstance(e, ev.BatchProgress)
        and (e.stage, e.epoch) == (1, 2) and e.batch > e.batches // 2,
        "stage2-epoch1": lambda e: isinstance(e, ev.EpochEnded) and (e.stage, e.epoch) == (2, 1),
    }
    control = RunControl()
    first = run_ashem(settings, [cancel_when(control, predicates[where])], control,
                      corpus=tiny_corpus(settings))
    assert first.status == "cancelled"
    second = resume_ashem(first.run_dir, corpus=tiny_corpus(settings))
    assert second.status == "finished", second.error
    assert figures(second.summary) == figures(straight.summary)


# -- the training-compute budget -----------------------------------------------------------------

@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    """The tiny run without a budget, and one training step's MACs in each stage."""
    tmp = tmp_path_factory.mktemp("plain")
    settings = tiny_settings(tmp)
    events = []
    result = run_ashem(settings, [events.append], corpus=tiny_corpus(settings))
    assert result.status == "finished", result.error
    started = {e.stage: e for e in events_of(events, "StageStarted")}
    stage_one = [e for e in events_of(events, "EpochEnded") if e.stage == 1][0]
    one_step = stage_one.training_macs / started[1].batches  # every stage-1 batch is alike
    grown = EarlyExitLM(events[0].vocab_size, 2, settings.model).grow(4)
    grown.freeze_lower(2)
    rows = settings.data.batch_size  # a full batch of hard tokens, one token a row
    two_step = training_macs(grown, TrainingStep(rows, 1, 2, rows)).total
    return settings, events, result, one_step, two_step


def budget_run(tmp_path, budget: float, sinks=(), control=None):
    settings = tiny_settings(tmp_path, f"run.training_macs_budget={budget!r}")
    events = []
    result = run_ashem(settings, [events.append, *sinks], control, corpus=tiny_corpus(settings))
    return settings, events, result


def test_the_budget_ends_training_at_the_first_batch_boundary_after_it(plain_run, tmp_path):
    _, plain_events, _, one_step, _ = plain_run
    batches = events_of(plain_events, "StageStarted")[0].batches
    budget = one_step * (batches + 6.4)  # in stage 1's epoch 2, after its 7th step
    _, events, result = budget_run(tmp_path, budget)
    assert result.status == "finished", result.error
    epochs = events_of(events, "EpochEnded")
    spent = epochs[-1].run_training_macs
    assert budget <= spent < budget + one_step
    ended = {e.stage: e for e in events_of(events, "StageEnded")}
    assert ended[1].stopped_by == "budget" and ended[1].epochs == 2
    progress = [e for e in events_of(events, "BatchProgress") if (e.stage, e.epoch) == (1, 2)]
    assert progress[-1].batch == 7 and progress[-1].batches == batches
    cut = [e for e in epochs if (e.stage, e.epoch) == (1, 2)][0]
    assert cut.training_macs == pytest.approx(7 * one_step)
    # Stage 2 starts with the budget spent: it validates its grown model once, untrained.
    later = [e for e in epochs if e.stage == 2]
    assert len(later) == 1 and later[0].training_macs == 0.0 and math.isnan(later[0].train_ppl)
    assert later[0].tokens_trained == cut.tokens_trained and later[0].run_training_macs == spent
    assert ended[2].stopped_by == "budget" and ended[2].epochs == 1
    assert not [e for e in events_of(events, "BatchProgress") if e.stage == 2]
    assert math.isfinite(result.summary["final"]["ppl"])
    assert result.summary["training_macs"]["total"] == pytest.approx(spent)


def test_a_budget_reached_in_a_later_stage_ends_it_there(plain_run, tmp_path):
    _, plain_events, _, _, two_step = plain_run
    stage_one = [e for e in events_of(plain_events, "StageEnded") if e.stage == 1][0]
    budget = stage_one.training_macs + 4.5 * two_step  # after stage 2's 5th step
    _, events, result = budget_run(tmp_path, budget)
    assert result.status == "finished", result.error
    ended = {e.stage: e for e in events_of(events, "StageEnded")}
    assert ended[1].stopped_by == stage_one.stopped_by != "budget"
    assert ended[1].epochs == stage_one.epochs
    assert ended[2].stopped_by == "budget" and ended[2].epochs == 1
    spent = events_of(events, "EpochEnded")[-1].run_training_macs
    assert budget <= spent < budget + two_step
    assert ended[2].training_macs == pytest.approx(5 * two_step)


def test_without_a_budget_stages_say_why_they_stopped(plain_run):
    settings, events, _, _, _ = plain_run
    for e in events_of(events, "StageEnded"):
        max_epochs = settings.stages[e.stage - 1].max_epochs
        assert e.stopped_by == ("patience" if e.stopped_early else "max_epochs")
        assert e.stopped_early or e.epochs == max_epochs


def test_a_budget_beyond_the_run_and_a_flat_cosine_change_no_figure(plain_run, tmp_path):
    """Setting each step's rate to the rate it has, and counting a budget never reached, do
    the default run's arithmetic: the same figures, to the bit."""
    _, _, plain, _, _ = plain_run
    settings = tiny_settings(tmp_path, "run.training_macs_budget=1e30",
                             "optimizer.schedule=cosine", "optimizer.min_lr_ratio=1.0")
    result = run_ashem(settings, corpus=tiny_corpus(settings))
    assert result.status == "finished", result.error
    assert figures(result.summary) == figures(plain.summary)


def test_a_budget_run_resumed_stops_where_the_straight_one_does(plain_run, tmp_path):
    _, plain_events, _, one_step, _ = plain_run
    batches = events_of(plain_events, "StageStarted")[0].batches
    budget = one_step * (batches + 6.4)
    _, _, straight = budget_run(tmp_path / "straight", budget)
    control = RunControl()
    at_epoch_one = cancel_when(control, lambda e: isinstance(e, ev.EpochEnded) and e.epoch == 1)
    settings, _, first = budget_run(tmp_path / "cancelled", budget, [at_epoch_one], control)
    assert first.status == "cancelled"
    second = resume_ashem(first.run_dir, corpus=tiny_corpus(settings))
    assert second.status == "finished", second.error
    assert figures(second.summary) == figures(straight.summary)
