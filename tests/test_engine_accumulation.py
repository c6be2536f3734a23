"""Gradient accumulation (data.micro_batch_size), the host's reads in training, run.compile.

Tolerance of accumulated against plain: 1e-5 relative on every figure. A micro-batch's loss
is its mean times its share of the batch's tokens; the parts' gradients add up to the
batch's up to float32 rounding of the sums in another order (measured on the run below:
at most 1.6e-7, a mining confidence; the PPLs within 5e-8), which 1e-5 leaves room to
compound over more steps, while a micro-batch lost or weighted wrongly moves them by > 1e-3.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from engine_support import single_thread  # noqa: F401  (autouse fixture)
from test_engine_scale import figures
from tiny import tiny_corpus, tiny_settings

from ashem_engine import stages
from ashem_engine.cascade import Cascade
from ashem_engine.control import RunControl
from ashem_engine.data import Batches
from ashem_engine.events import BatchProgress
from ashem_engine.mining import HardTokens
from ashem_engine.model import EarlyExitLM
from ashem_engine.run import run_ashem
from ashem_engine.settings import ModelSettings, OptimizerSettings, StageSettings
from ashem_engine.stages import (CompileFailed, HardTokenTask, MaskedSequenceTask,
                                 NumericFault, SequenceTask, make_optimizer, run_stage,
                                 train_epoch)

# Stage 1 (SequenceTask), stage 2 in token context (HardTokenTask), stage 3 in sequence
# context (MaskedSequenceTask), an epoch each. Inference as trained: in token context the new
# layers train on sequences of one token, where attention's query and key weights get no
# gradient but rounding noise (~1e-9), which Adam turns into steps of ~lr / 10; spec inference
# reads those weights over whole sequences, so any change in the order of a sum moves that
# PPL by 1e-5 to 4e-5 (measured: two processes against one, without micro-batches, and a
# grad_clip changed by 1e-7 alike), accumulation or not.
THREE_STAGES = ("stages.1.max_epochs=1", "stages.2.max_epochs=1", "stages.3.layers=6",
                "stages.3.lr=1e-3", "stages.3.context=sequence", "stages.3.max_epochs=1",
                "evaluation.inference=as_trained", "evaluation.sweep_points=0")


def test_micro_batches_give_the_figures_of_the_whole_batch(tmp_path, monkeypatch):
    split = set()
    real = stages.StageTask.micro_batches

    def recording(self, index, size):
        found = real(self, index, size)
        if len(found) > 1:
            split.add(type(self).__name__)
        return found

    monkeypatch.setattr(stages.StageTask, "micro_batches", recording)
    runs = {}
    for micro in (0, 1):  # data.batch_size = 4: a quarter of it
        s = tiny_settings(tmp_path / str(micro), *THREE_STAGES, f"data.micro_batch_size={micro}")
        result = run_ashem(s, [], None, tiny_corpus(s))
        assert result.status == "finished", result.error
        runs[micro] = figures(result.summary)
    assert split == {"SequenceTask", "HardTokenTask", "MaskedSequenceTask"}  # all accumulated
    assert runs[0].keys() == runs[1].keys() and "stage 3 best_val_ppl" in runs[0]
    for name, value in runs[0].items():
        assert math.isclose(runs[1][name], value, rel_tol=1e-5), name


# -- the tasks, built small -------------------------------------------------------------

CFG = ModelSettings(dim=16, heads=2, ffn_hidden=32)
VOCAB, BATCHES, ROWS, T = 40, 12, 4, 6


def random_batches(seed: int) -> Batches:
    g = torch.Generator().manual_seed(seed)
    return Batches(torch.randint(0, VOCAB, (BATCHES, ROWS, T), generator=g),
                   torch.randint(0, VOCAB, (BATCHES, ROWS, T), generator=g))


def grown_model() -> EarlyExitLM:
    torch.manual_seed(0)
    model = EarlyExitLM(VOCAB, 2, CFG).grow(4)
    model.freeze_lower(2)
    return model


def make_task(kind: str) -> stages.StageTask:
    if kind == "sequence-1":
        torch.manual_seed(0)
        return SequenceTask(EarlyExitLM(VOCAB, 2, CFG), random_batches(1), None, Cascade.of([2]))
    model, cascade, g = grown_model(), Cascade.of([2, 4], [0.5]), torch.Generator()
    if kind == "hard-tokens":
        k = BATCHES * ROWS - 3  # the last batch is short
        hard = HardTokens(torch.randn(k, CFG.dim, generator=g.manual_seed(2)),
                          torch.randint(0, VOCAB, (k,), generator=g), torch.rand(k),
                          torch.arange(k))
        return HardTokenTask(model, hard, torch.randperm(k, generator=g), ROWS, None, cascade)
    remaining = torch.rand(BATCHES, ROWS, T, generator=g.manual_seed(3)) < 0.4
    remaining[0, 1:] = False  # micro-batches without a token to train
    return MaskedSequenceTask(model, None, remaining, random_batches(4), None, cascade)


KINDS = ("sequence-1", "hard-tokens", "masked-sequence")


def gradients(task, micro: int) -> list:
    """The gradients of one step on batch 0, accumulated over micro-batches of `micro` rows."""
    params = [p for p in task.model.parameters() if p.requires_grad]
    task.model.zero_grad(set_to_none=True)
    running = torch.zeros((), dtype=torch.float64)
    stages.accumulate_gradients(task, task.loss, 0, micro, running)
    return [running, *(p.grad.clone() for p in params)]


@pytest.mark.parametrize("kind", KINDS)
def test_accumulated_gradients_are_the_whole_batchs(kind):
    task = make_task(kind)
    whole = gradients(task, 0)
    for micro in (1, 3):  # an uneven split too
        assert len(task.micro_batches(0, micro)) > 1
        for a, b in zip(whole, gradients(task, micro)):
            assert torch.allclose(a, b.to(a.dtype), rtol=1e-5, atol=1e-7)


def test_a_masked_batch_is_the_boolean_selection_of_its_rows():
    task = make_task("masked-sequence")
    for index in range(BATCHES):
        rows = slice(1, 3)
        hidden, targets = task.batch(index, rows)
        mask = task.remaining[index][rows]
        with torch.no_grad():
            assert torch.equal(hidden, task.upper(index, rows)[mask])
        assert torch.equal(targets, task.y[index][rows][mask])


# -- the host waits only where a progress event is due ----------------------------------

READS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__")


def plain_head_loss(hidden, weight, targets):
    """head.py's loss skips two copies after reading the backward's incoming gradient on
    the CPU, where that read is free (on a GPU it does not read): the plain loss here, so
    that every read counted is the training loop's own."""
    return F.cross_entropy(hidden @ weight.t(), targets)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("micro", [0, 2])
def test_training_reads_the_device_once_per_progress_event(kind, micro, monkeypatch):
    task = make_task(kind)
    optimizer = make_optimizer(task.model, 1e-3, OptimizerSettings())
    monkeypatch.setattr(stages, "head_loss", plain_head_loss)
    monkeypatch.setattr(stages, "host_reads_are_cheap", lambda device: False)  # as on a GPU
    reads = []
    for name in READS:
        real = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name, lambda self, *a, _real=real, _name=name, **k:
                            reads.append(_name) or _real(self, *a, **k))
    events = []
    train_epoch(1, 1, task, optimizer, OptimizerSettings(grad_clip=1e-3), RunControl(),
                events.append, progress_events_per_epoch=4, micro_batch_size=micro)
    monkeypatch.undo()
    progress = [e for e in events if isinstance(e, BatchProgress)]
    every = math.ceil(task.num_batches() / 4)  # N: the batches between two progress events
    assert [e.batch for e in progress] == [*range(every, task.num_batches(), every),
                                           task.num_batches()]
    assert reads == ["__float__"] * len(progress)  # == ceil(batches / N) per epoch


def test_a_non_finite_loss_names_the_batches_since_the_last_read(monkeypatch):
    task = make_task("sequence-1")
    real = task.loss
    monkeypatch.setattr(task, "loss", lambda index: real(index) * (
        float("nan") if index == 5 else 1.0))  # the sixth batch
    optimizer = make_optimizer(task.model, 1e-3, OptimizerSettings())
    with pytest.raises(NumericFault) as info:
        train_epoch(1, 2, task, optimizer, OptimizerSettings(), RunControl(), lambda e: None,
                    progress_events_per_epoch=3)  # read after batches 4, 8 and 12
    assert info.value.where == "stage 1, epoch 2, batch 8"
    assert str(info.value).startswith("loss became nan in stage 1, epoch 2, batch 8; "
                                      "first in one of batches 5-8; ")


# -- run.compile ---------------------------------------------------------------------------

def test_a_compiler_that_fails_is_one_line_naming_the_key(monkeypatch):
    def no_compiler(*args, **kwargs):
        raise RuntimeError("no working C++ compiler found\n  (details)")

    monkeypatch.setattr(torch, "compile", no_compiler)
    task = make_task("sequence-1")
    cfg = StageSettings(layers=2, lr=1e-3, max_epochs=1)
    with pytest.raises(CompileFailed) as info:
        run_stage(1, task, cfg, OptimizerSettings(), RunControl(), lambda e: None,
                  compile_model=True)
    message = str(info.value)
    assert "\n" not in message and message.startswith("run.compile = true")
    assert "no working C++ compiler found" in message and "run.compile = false" in message


def test_a_compile_that_fails_at_the_first_step_is_named_too(monkeypatch):
    from torch._dynamo.exc import TorchDynamoException

    def failing_when_called(fn, *args, **kwargs):
        def call(*a, **k):
            raise TorchDynamoException("backend 'inductor' failed")
        return call

    monkeypatch.setattr(torch, "compile", failing_when_called)
    task = make_task("sequence-1")
    with pytest.raises(CompileFailed, match=r"^run\.compile = true.*'inductor' failed"):
        run_stage(1, task, StageSettings(layers=2, lr=1e-3, max_epochs=1),
                  OptimizerSettings(), RunControl(), lambda e: None, compile_model=True)
