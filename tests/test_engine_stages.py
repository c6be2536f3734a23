"""The stage loop: early stopping (strictly lower PPL), patience, restore-best, events."""
from __future__ import annotations

import math

import pytest
import torch

from ashem_engine.cascade import Cascade, Evaluation
from ashem_engine.control import Cancelled, RunControl
from ashem_engine.data import Batches
from ashem_engine.events import BatchProgress, EpochEnded
from ashem_engine.head import head_loss
from ashem_engine.model import EarlyExitLM
from ashem_engine.settings import ModelSettings, OptimizerSettings, StageSettings
from ashem_engine.stages import NumericFault, StageTask, run_stage, snapshot
from engine_support import single_thread  # noqa: F401  (autouse fixture)

CFG = ModelSettings(dim=16, heads=2, ffn_hidden=32)
VOCAB = 30
OPT = OptimizerSettings()


class ScriptedTask(StageTask):
    """Real training on a few random batches; validation returns scripted PPLs and records
    the weights it saw (the weights at the end of each epoch)."""

    def __init__(self, model, ppls, exit_layers=(2,), batches=3, shallow=0.75):
        super().__init__(model, validation=None,
                         cascade=Cascade.of(exit_layers, [0.5] * (len(exit_layers) - 1)))
        g = torch.Generator().manual_seed(0)
        self.x = torch.randint(0, VOCAB, (batches, 2, 5), generator=g)
        self.y = torch.randint(0, VOCAB, (batches, 2, 5), generator=g)
        self.ppls = list(ppls)
        self.shallow = shallow
        self.seen: dict[int, dict] = {}
        self.loss_calls = 0

    def num_batches(self):
        return self.x.shape[0]

    def tokens_in(self, index):
        return self.y[index].numel()

    def loss(self, index):
        self.loss_calls += 1
        h = self.model.hidden(self.x[index])
        return head_loss(h.reshape(-1, h.shape[-1]), self.model.head.weight, self.y[index])

    def validate(self, check):
        check()
        epoch = len(self.seen) + 1
        self.seen[epoch] = snapshot(self.model)
        ppl = self.ppls[epoch - 1]
        tokens = 1000
        counts = [int(tokens * self.shallow), tokens - int(tokens * self.shallow)] \
            if self.cascade.last else [tokens]
        return Evaluation(tokens=tokens, nll_sum=math.log(ppl) * tokens, correct=100 + epoch,
                          exit_layers=self.cascade.layers, exit_counts=counts, spec_cost=1.0,
                          honest_cost=1.0)


def model(layers=2, seed=0):
    torch.manual_seed(seed)
    return EarlyExitLM(VOCAB, layers, CFG)


def drive(ppls, patience, max_epochs=None, task=None, control=None, **kw):
    task = task or ScriptedTask(model(), ppls)
    cfg = StageSettings(layers=2, lr=1e-2, max_epochs=max_epochs or len(ppls),
                        patience=patience)
    events, improved_at = [], []
    outcome = run_stage(1, task, cfg, OPT, control or RunControl(), events.append,
                        on_improved=lambda e, s: improved_at.append((e, s)), **kw)
    return task, outcome, events, improved_at


def epochs_of(events):
    return [e for e in events if isinstance(e, EpochEnded)]


def same_state(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_patience_three_restores_best_epoch():
    ppls = [10, 8, 9, 7, 7.5, 7.6, 7.7, 6, 5]  # 6 and 5 must never be reached
    task, outcome, events, improved_at = drive(ppls, patience=3)
    assert outcome.epochs == 7 and outcome.best_epoch == 4 and outcome.stopped_early
    assert outcome.best_val_ppl == pytest.approx(7)
    assert outcome.best_val_acc == pytest.approx(104 / 1000)
    assert len(task.seen) == 7 and len(outcome.history) == 7
    assert task.loss_calls == 7 * 3

    ends = epochs_of(events)
    assert [e.epoch for e in ends] == list(range(1, 8))
    assert [e.improved for e in ends] == [True, True, False, True, False, False, False]
    assert [e.patience_counter for e in ends] == [0, 0, 1, 0, 1, 2, 3]
    assert [e.best_epoch for e in ends] == [1, 2, 2, 4, 4, 4, 4]
    assert [e.best_val_ppl for e in ends] == pytest.approx([10, 8, 8, 7, 7, 7, 7])
    assert [e.val_ppl for e in ends] == pytest.approx(ppls[:7])
    assert all(e.patience == 3 and e.stage == 1 and e.hard_ppl is None
               and e.shallow_ratio is None for e in ends)
    assert all(math.isfinite(e.train_ppl) and e.train_ppl > 1 for e in ends)

    # training really moved the weights, and the best epoch's weights are what is left
    assert not same_state(task.seen[4], task.seen[7])
    assert same_state(task.model.state_dict(), task.seen[4])
    assert [e for e, _ in improved_at] == [1, 2, 4]
    for epoch, state in improved_at:
        assert same_state(state, task.seen[epoch])


def test_equal_ppl_is_not_an_improvement():
    _, outcome, events, _ = drive([10, 10, 10], patience=1)
    assert outcome.epochs == 2 and outcome.best_epoch == 1 and outcome.stopped_early
    assert [e.improved for e in epochs_of(events)] == [True, False]

    _, outcome, events, _ = drive([10, 9, 9, 9, 1], patience=3)
    assert outcome.epochs == 5 and outcome.best_epoch == 5 and not outcome.stopped_early
    assert [e.patience_counter for e in epochs_of(events)] == [0, 0, 1, 2, 0]


def test_patience_one_stops_at_first_non_improvement():
    task, outcome, events, _ = drive([5, 4, 4.5, 3, 2], patience=1)
    assert outcome.epochs == 3 and outcome.best_epoch == 2 and outcome.stopped_early
    assert same_state(task.model.state_dict(), task.seen[2])


def test_max_epochs_limit_is_not_early_stopping():
    task, outcome, events, _ = drive([9, 8, 7, 6, 5], patience=2, max_epochs=3)
    assert outcome.epochs == 3 and outcome.best_epoch == 3 and not outcome.stopped_early
    assert len(epochs_of(events)) == 3
    assert same_state(task.model.state_dict(), task.seen[3])


def test_routed_validation_reports_shallow_ratio():
    grown = model().grow(4)
    grown.freeze_lower(2)
    task = ScriptedTask(grown, [5, 6], exit_layers=(2, 4), shallow=0.75)
    _, outcome, events, _ = drive([5, 6], patience=1, task=task)
    assert [e.shallow_ratio for e in epochs_of(events)] == [0.75, 0.75]
    assert [r["shallow_ratio"] for r in outcome.history] == [0.75, 0.75]


def test_frozen_parameters_do_not_move():
    source = model()
    grown = source.grow(4)
    grown.freeze_lower(2)
    before = snapshot(grown)
    task = ScriptedTask(grown, [5, 4, 3], exit_layers=(2, 4))
    drive([5, 4, 3], patience=1, task=task)
    after = grown.state_dict()
    for k in after:
        frozen = k.startswith(("embedding.", "layers.0.", "layers.1."))
        assert torch.equal(after[k], before[k]) == frozen, k


def test_batch_progress_is_throttled_and_complete():
    task = ScriptedTask(model(), [3, 2], batches=10)
    _, _, events, _ = drive([3, 2], patience=1, task=task, progress_events_per_epoch=3)
    progress = [e for e in events if isinstance(e, BatchProgress)]
    # ceil(10 / 3) = every 4th batch, and always the last
    assert [(e.epoch, e.batch) for e in progress] == [(1, 4), (1, 8), (1, 10),
                                                      (2, 4), (2, 8), (2, 10)]
    assert all(e.batches == 10 and e.loss > 0 for e in progress)
    assert progress[2].eta_s == 0.0


def test_control_is_checked_before_every_batch_and_cancel_stops():
    class Recording(RunControl):
        def __init__(self):
            super().__init__()
            self.wheres = []

        def checkpoint(self, where):
            self.wheres.append(where)
            super().checkpoint(where)

    control = Recording()
    task = ScriptedTask(model(), [5, 4, 3])
    real_loss = task.loss

    def loss(index):
        if task.loss_calls == 4:  # during epoch 2, batch 2
            control.cancel()
        return real_loss(index)

    task.loss = loss
    with pytest.raises(Cancelled) as info:
        drive([5, 4, 3], patience=1, task=task, control=control)
    assert info.value.where == "stage 1, epoch 2, batch 3/3"
    assert control.wheres[:4] == ["stage 1, epoch 1, batch 1/3", "stage 1, epoch 1, batch 2/3",
                                  "stage 1, epoch 1, batch 3/3", "stage 1, epoch 1, validation"]


def test_non_finite_loss_is_a_numeric_fault():
    task = ScriptedTask(model(), [5, 4])
    task.loss = lambda index: torch.tensor(float("nan"), requires_grad=True)
    with pytest.raises(NumericFault) as info:
        drive([5, 4], patience=1, task=task)
    assert info.value.where == "stage 1, epoch 1, batch 1"
    assert "nan" in str(info.value)


# -- the real tasks --------------------------------------------------------------------------

def test_sequence_task_loss_is_mean_cross_entropy_of_the_full_model():
    from ashem_engine.stages import SequenceTask
    m = model()
    g = torch.Generator().manual_seed(1)
    train = Batches(torch.randint(0, VOCAB, (2, 3, 5), generator=g),
                    torch.randint(0, VOCAB, (2, 3, 5), generator=g))
    task = SequenceTask(m, train, None, Cascade.of([2]))
    assert task.num_batches() == 2 and task.tokens_in(1) == 15
    expected = torch.nn.functional.cross_entropy(m(train.x[1]).reshape(-1, VOCAB),
                                                 train.y[1].reshape(-1))
    assert torch.allclose(task.loss(1), expected, atol=1e-5)


def test_hard_token_task_feeds_each_token_alone_through_the_new_layers():
    from ashem_engine.mining import HardTokens
    from ashem_engine.stages import HardTokenTask
    grown = model().grow(4)
    grown.freeze_lower(2)
    g = torch.Generator().manual_seed(2)
    k = 10
    hard = HardTokens(hidden=torch.randn(k, 16, generator=g),
                      targets=torch.randint(0, VOCAB, (k,), generator=g),
                      confidences=torch.rand(k, generator=g), positions=torch.arange(k))
    order = torch.randperm(k, generator=g)
    task = HardTokenTask(grown, hard, order, 4, None, Cascade.of([2, 4], [0.5]))
    assert task.num_batches() == 3 and [task.tokens_in(i) for i in range(3)] == [4, 4, 2]
    assert torch.equal(torch.cat(task.order), order)
    idx = order[8:]
    with torch.no_grad():
        out = torch.stack([grown.run_layers(hard.hidden[i].reshape(1, 1, 16), 2, 4)[0, 0]
                           for i in idx.tolist()])
        expected = torch.nn.functional.cross_entropy(grown.head(out), hard.targets[idx])
        assert torch.allclose(task.loss(2), expected, atol=1e-5)
        all_out = torch.stack([grown.run_layers(h.reshape(1, 1, 16), 2, 4)[0, 0]
                               for h in hard.hidden])
        hard_ppl = math.exp(torch.nn.functional.cross_entropy(grown.head(all_out),
                                                              hard.targets).item())
    assert task.hard_ppl() == pytest.approx(hard_ppl, rel=1e-5)


def test_validate_caches_the_frozen_first_exit():
    from ashem_engine.cascade import evaluate
    from ashem_engine.stages import SequenceTask
    grown = model().grow(4)
    grown.freeze_lower(2)
    g = torch.Generator().manual_seed(3)
    validation = Batches(torch.randint(0, VOCAB, (2, 3, 5), generator=g),
                         torch.randint(0, VOCAB, (2, 3, 5), generator=g))
    cascade = Cascade.of([2, 4], [0.05])
    task = SequenceTask(grown, validation, validation, cascade)
    first = task.validate(lambda: None)
    assert task._first_exit.hidden.shape == (2 * 3 * 5, 16)
    plain = evaluate(grown, validation, cascade)
    assert first.nll_sum == pytest.approx(plain.nll_sum, rel=1e-6)
    assert first.exit_counts == plain.exit_counts
    with torch.no_grad():  # the head and the new layers change: the cache stays valid
        grown.head.weight.mul_(1.5)
        grown.layers[3].ffn.w2.weight.mul_(0.5)
    again = task.validate(lambda: None)
    plain = evaluate(grown, validation, cascade)
    assert again.nll_sum == pytest.approx(plain.nll_sum, rel=1e-6)


def test_a_frozen_head_caches_the_first_exits_statistics_too():
    from ashem_engine.cascade import evaluate
    from ashem_engine.head import exit_stats
    from ashem_engine.stages import SequenceTask
    grown = model().grow(4)
    grown.freeze_lower(2, freeze_head=True)
    g = torch.Generator().manual_seed(3)
    validation = Batches(torch.randint(0, VOCAB, (2, 3, 5), generator=g),
                         torch.randint(0, VOCAB, (2, 3, 5), generator=g))
    cascade = Cascade.of([2, 4], [0.05])
    task = SequenceTask(grown, validation, validation, cascade)
    task.validate(lambda: None)
    cached = task._first_exit.stats
    with torch.no_grad():
        fresh = exit_stats(grown.hidden(validation.x[1], stop=2), grown.head.weight,
                           validation.y[1])
    assert torch.equal(cached.nll[15:], fresh.nll)
    assert torch.equal(cached.confidence[15:], fresh.confidence)
    with torch.no_grad():  # the new layers train: every epoch still routes as from scratch
        grown.layers[3].ffn.w2.weight.mul_(0.5)
    again, plain = task.validate(lambda: None), evaluate(grown, validation, cascade)
    assert (again.nll_sum, again.exit_counts) == (plain.nll_sum, plain.exit_counts)
    assert task._first_exit.stats is cached
