"""Training compute, counted by hand on the tiny model of test_engine_costs (dim 16, ffn 32,
vocabulary 50): a block costs 2704 MACs per token at length 8 (2592 at length 1): 768 in its
query, key and value projections, 1792 in its output projection and feed-forward, 144 (32)
in attention; the head 800.

Backward, per token: a trainable block with something trainable below it 2 x 2704 = 5408
(weight gradients 1024 + 1536, input gradients 768 + 1792, attention's two operands
2 x 144); a trainable block on stored states at length 1, 2560 + 1792 + 2 x 32 = 4416 (no
input gradients for the projections that read its input); the head 800 per gradient.
"""
from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from engine_support import single_thread  # noqa: F401  (autouse fixture)
from ashem_engine import events as ev
from ashem_engine.cascade import Cascade
from ashem_engine.control import RunControl
from ashem_engine.costs import TrainingStep, training_macs
from ashem_engine.data import Batches
from ashem_engine.mining import HardTokens
from ashem_engine.model import EarlyExitLM, block_macs_per_token, head_macs_per_token
from ashem_engine.run import resume_ashem, run_ashem
from ashem_engine.settings import ModelSettings
from ashem_engine.stages import HardTokenTask, SequenceTask
from tiny import tiny_corpus, tiny_settings

CFG = ModelSettings(dim=16, heads=2, ffn_hidden=32)
VOCAB = 50


def batches(seed: int, n: int = 2, rows: int = 4, seq_len: int = 8) -> Batches:
    x = torch.randint(0, VOCAB, (n, rows, seq_len + 1),
                      generator=torch.Generator().manual_seed(seed))
    return Batches(x[..., :-1].contiguous(), x[..., 1:].contiguous())


def stage_one() -> SequenceTask:
    torch.manual_seed(0)
    return SequenceTask(EarlyExitLM(VOCAB, 2, CFG), batches(0), batches(1), Cascade.of([2]))


def token_context(freeze_head: bool, hard: int = 5, batch_size: int = 3) -> HardTokenTask:
    torch.manual_seed(0)
    model = EarlyExitLM(VOCAB, 2, CFG).grow(4)
    model.freeze_lower(2, freeze_head=freeze_head)
    g = torch.Generator().manual_seed(2)
    tokens = HardTokens(torch.randn(hard, CFG.dim, generator=g),
                        torch.randint(0, VOCAB, (hard,), generator=g),
                        torch.rand(hard, generator=g), torch.arange(hard))
    return HardTokenTask(model, tokens, torch.randperm(hard, generator=g), batch_size,
                         batches(1), Cascade.of([2, 4], [0.5]))


def test_a_stage_one_step_by_hand():
    task = stage_one()
    assert task.step(0) == TrainingStep(positions=32, seq_len=8, start=0, loss_tokens=32)
    macs = training_macs(task.model, task.step(0))
    assert macs.forward == 32 * (2 * 2704 + 800)
    assert macs.backward == 32 * (2 * 5408 + 2 * 800)  # all trains, the embedding below all
    assert task.epoch_macs() == 2 * 32 * 3 * (2 * 2704 + 800)
    assert task.hard_ppl_macs() == 0 and task.setup_macs() == 0


@pytest.mark.parametrize("freeze_head, head_backward", [(False, 1600), (True, 800)])
def test_a_token_context_step_by_hand(freeze_head, head_backward):
    task = token_context(freeze_head)
    assert [task.step(0), task.step(1)] == [TrainingStep(3, 1, 2, 3), TrainingStep(2, 1, 2, 2)]
    macs = training_macs(task.model, task.step(0))
    assert macs.forward == 3 * (2 * 2592 + 800)
    assert macs.backward == 3 * (4416 + 2 * 2592 + head_backward)
    assert task.epoch_macs() == 5 * (2 * 2592 + 800 + 4416 + 2 * 2592 + head_backward)
    assert task.hard_ppl_macs() == 5 * (2 * 2592 + 800)  # its forward, every hard token


def test_the_rule_follows_the_requires_grad_flags():
    model, step = EarlyExitLM(VOCAB, 4, CFG), TrainingStep(32, 8, 0, 32)
    assert training_macs(model, step).backward == 2 * training_macs(model, step).forward
    model.requires_grad_(False)
    model.head.weight.requires_grad_(True)
    assert training_macs(model, step).backward == 32 * 800  # the head's weight gradient
    model.head.weight.requires_grad_(False)
    assert training_macs(model, step).backward == 0
    model.layers[0].requires_grad_(True)  # the first block: every layer above passes back
    # block 1: its weights and inner input gradients (2 x 2704 - 768); blocks 2-4 and the
    # head: input gradients only (2704 + 144 each block, 800)
    assert training_macs(model, step).backward == \
        32 * ((2 * 2704 - 768) + 3 * (2704 + 144) + 800)


def measured_weight_products(task) -> float:
    """MACs of the matrix products with a weight in one real training step, forward and
    backward, as PyTorch runs them (attention's products are batched: left out)."""
    with FlopCounterMode(display=False) as counter:
        task.loss(0).backward()
    flops = counter.get_flop_counts()["Global"]
    return sum(n for op, n in flops.items() if str(op) in ("aten.mm", "aten.addmm")) / 2


@pytest.mark.parametrize("make, attention", [
    (stage_one, 32 * 2 * 3 * 144),  # positions x blocks x (forward + both operands back)
    (lambda: token_context(False), 3 * 2 * 3 * 32),
    (lambda: token_context(True), 3 * 2 * 3 * 32)])
def test_the_count_is_what_pytorch_computes(make, attention):
    task = make()
    counted = training_macs(task.model, task.step(0)).total
    assert measured_weight_products(task) == counted - attention


# -- whole runs ------------------------------------------------------------------------------

FAST = ("evaluation.sweep_points=0",)
SEQUENCE_CONTEXT = (*FAST, "stages.2.context=sequence", "evaluation.inference=as_trained",
                    "stages.2.freeze_head=true")


def recorded_run(tmp_path, *extra, cancel_at=None):
    settings = tiny_settings(tmp_path, *extra)
    events, control = [], RunControl()

    def sink(event):
        events.append(event)
        if cancel_at and isinstance(event, ev.EpochEnded) and \
                (event.stage, event.epoch) == cancel_at:
            control.cancel()
    result = run_ashem(settings, [sink], control, corpus=tiny_corpus(settings))
    return settings, events, result


def of(events, kind):
    return [e for e in events if isinstance(e, kind)]


@pytest.fixture(scope="module")
def token_run(tmp_path_factory):
    settings, events, result = recorded_run(tmp_path_factory.mktemp("token"), *FAST)
    assert result.status == "finished", result.error
    return settings, events, result.summary


def test_a_runs_training_macs_add_up_over_batches_epochs_and_stages(token_run):
    settings, events, summary = token_run
    (started,), (mined,) = of(events, ev.RunStarted), of(events, ev.HardExamplesCollected)
    ended = {e.stage: e for e in of(events, ev.StageEnded)}
    d, seq = settings.model.dim, settings.data.seq_len
    block, block1 = block_macs_per_token(settings.model, seq), \
        block_macs_per_token(settings.model, 1)
    head = head_macs_per_token(settings.model, started.vocab_size)
    per_epoch = {1: started.train_tokens * 3 * (2 * block + head),
                 # per hard token: 2 blocks and the head forward; back, block 3 without the
                 # input gradients of its first projections, block 4, the head's two
                 2: mined.count * (2 * block1 + head + (2 * block1 - 3 * d * d) + 2 * block1
                                   + 2 * head)}
    for e in of(events, ev.EpochEnded):
        assert e.training_macs == per_epoch[e.stage]
    for stage in (1, 2):
        assert ended[stage].training_macs == ended[stage].epochs * per_epoch[stage]
    stages = [ended[1].training_macs, ended[2].training_macs]
    assert summary["training_macs"] == {"stages": stages, "total": sum(stages)}
    assert [s["training_macs"] for s in summary["stages"]] == stages


def test_selection_is_counted_apart(token_run):
    settings, events, summary = token_run
    (started,), (mined,) = of(events, ev.RunStarted), of(events, ev.HardExamplesCollected)
    seq, val = settings.data.seq_len, started.val_tokens
    block, block1 = block_macs_per_token(settings.model, seq), \
        block_macs_per_token(settings.model, 1)
    head = head_macs_per_token(settings.model, started.vocab_size)
    assert mined.selection_macs == val * (2 * block + head)  # mining on validation
    for e in of(events, ev.EpochEnded):
        if e.stage == 1:
            assert e.selection_macs == val * (2 * block + head)
            continue
        deep = round((1 - e.shallow_ratio) * val)  # through the upper blocks ("spec")
        lower = val * 2 * block if e.epoch == 1 else 0  # frozen: computed once
        hard_ppl = mined.count * (2 * block1 + head)
        assert e.selection_macs == lower + val * (2 * block + head) + deep * head + hard_ppl
    ended = [e.selection_macs for e in of(events, ev.StageEnded)]
    assert summary["selection_macs"] == {"stages": ended, "mining": [mined.selection_macs],
                                         "total": sum(ended) + mined.selection_macs}


@pytest.fixture(scope="module")
def sequence_run(tmp_path_factory):
    settings, events, result = recorded_run(tmp_path_factory.mktemp("seq"), *SEQUENCE_CONTEXT)
    assert result.status == "finished", result.error
    return settings, events, result


def test_the_sequence_context_counts_whole_sequences_and_its_context_once(sequence_run):
    settings, events, result = sequence_run
    (started,), (mined,) = of(events, ev.RunStarted), of(events, ev.HardExamplesCollected)
    batches = [e for e in of(events, ev.StageStarted) if e.stage == 2][0].batches
    first, second, *_ = [e for e in of(events, ev.EpochEnded) if e.stage == 2]
    d, rows, seq = settings.model.dim, settings.data.batch_size, settings.data.seq_len
    block = block_macs_per_token(settings.model, seq)
    head = head_macs_per_token(settings.model, started.vocab_size)
    # every position of a batch with a hard token runs both new blocks; frozen head
    assert second.training_macs == batches * rows * seq * (6 * block - 3 * d * d) + \
        mined.count * 2 * head
    assert first.training_macs - second.training_macs == mined.selection_macs  # the context


def test_a_resumed_run_reports_the_same_compute(sequence_run, tmp_path):
    _, _, whole = sequence_run
    settings, _, first = recorded_run(tmp_path, *SEQUENCE_CONTEXT, cancel_at=(2, 2))
    assert first.status == "cancelled"
    events = []
    second = resume_ashem(first.run_dir, [events.append], corpus=tiny_corpus(settings))
    assert second.status == "finished", second.error
    assert [e.epoch for e in of(events, ev.EpochEnded)] == [3]  # epochs 1-2 not redone
    for key in ("training_macs", "selection_macs", "compute_macs"):
        assert second.summary[key] == whole.summary[key]
        assert second.summary[key]["total"] > 0


def test_a_frozen_first_exit_is_counted_once_per_stage(sequence_run):
    """Head and lower blocks frozen: validation computes the first exit's blocks and head
    once, in the stage's first epoch; later epochs pay the upper blocks and the deep head."""
    settings, events, _ = sequence_run
    (started,) = of(events, ev.RunStarted)
    val, seq = started.val_tokens, settings.data.seq_len
    block = block_macs_per_token(settings.model, seq)
    head = head_macs_per_token(settings.model, started.vocab_size)
    first, second, *_ = [e for e in of(events, ev.EpochEnded) if e.stage == 2]
    deep = [round((1 - e.shallow_ratio) * val) for e in (first, second)]
    assert first.selection_macs - second.selection_macs == \
        val * (2 * block + head) + (deep[0] - deep[1]) * head
