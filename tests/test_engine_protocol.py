"""The sound protocol's settings: where hard tokens are mined, where the final report is
made (and that nothing reads it before), a frozen shared head, and the sequence context."""
from __future__ import annotations

import json

import torch

from ashem_engine.cascade import Cascade
from ashem_engine.data import Batches
from ashem_engine.model import EarlyExitLM
from ashem_engine.run import run_ashem
from ashem_engine.settings import ModelSettings
from ashem_engine.stages import MaskedSequenceTask
from ashem_engine.rundir import load_checkpoint
from tiny import tiny_corpus, tiny_settings


def test_mine_on_train_report_on_test_with_a_frozen_head(tmp_path):
    settings = tiny_settings(tmp_path, "mining.split=train", "evaluation.split=test",
                             "stages.2.freeze_head=true")
    corpus = tiny_corpus(settings)
    events = []
    result = run_ashem(settings, [events.append], corpus=corpus)
    assert result.status == "finished", result.error
    (threshold,) = [e for e in events if e.kind == "ThresholdComputed"]
    assert threshold.split == "train" and threshold.tokens == corpus.batches["train"].tokens
    (hard,) = [e for e in events if e.kind == "HardExamplesCollected"]
    assert hard.split == "train" and hard.total == corpus.batches["train"].tokens
    (final,) = [e for e in events if e.kind == "Evaluated"]
    assert final.split == "test" and final.tokens == corpus.batches["test"].tokens
    s1 = load_checkpoint(result.run_dir / "stage-1-best.pt")["model"]
    s2 = load_checkpoint(result.run_dir / "stage-2-best.pt")["model"]
    assert torch.equal(s1["head.weight"], s2["head.weight"])
    started = [e for e in events if e.kind == "StageStarted"]
    assert started[1].trainable_params == 2 * (4 * 16 * 16 + 3 * 16 * 32 + 2 * 16)


class WatchedSplits(dict):
    """The corpus' splits, recording every read with the number of events emitted so far."""

    def __init__(self, splits, events):
        super().__init__(splits)
        self.events, self.reads = events, []

    def __getitem__(self, split):
        self.reads.append((split, len(self.events)))
        return super().__getitem__(split)

    def items(self):
        raise AssertionError("the engine reads splits one by one, by name")


def watched_run(tmp_path, *overrides):
    settings = tiny_settings(tmp_path, *overrides)
    corpus = tiny_corpus(settings)
    events = []
    corpus.batches = WatchedSplits(corpus.batches, events)
    result = run_ashem(settings, [events.append], corpus=corpus)
    assert result.status == "finished", result.error
    return result, events, corpus


def index_of_last(events, kind):
    return max(i for i, e in enumerate(events) if e.kind == kind)


def test_the_report_split_is_read_only_for_the_final_report(tmp_path):
    result, events, corpus = watched_run(tmp_path, "mining.split=train",
                                         "evaluation.split=test")
    reads = corpus.batches.reads
    test_reads = [at for split, at in reads if split == "test"]
    assert test_reads, "the final report must read the test split"
    # every read of the test split comes after the last epoch of the last stage
    assert min(test_reads) > index_of_last(events, "StageEnded")
    assert min(test_reads) <= index_of_last(events, "Evaluated")
    mining = [at for split, at in reads
              if at <= index_of_last(events, "HardExamplesCollected")]
    assert {split for split, _ in reads} == {"train", "validation", "test"}
    assert mining  # the reads before mining ended saw no test data
    assert "test" not in {split for split, at in reads if at in mining}


def test_mined_tokens_come_only_from_the_mining_split(tmp_path):
    result, events, corpus = watched_run(tmp_path, "mining.split=train",
                                         "evaluation.split=test")
    train = dict.__getitem__(corpus.batches, "train")
    saved = load_checkpoint(result.run_dir / "stage-2-hard.pt", required="positions")
    assert int(saved["positions"].max()) < train.tokens
    assert torch.equal(saved["targets"], train.y.reshape(-1)[saved["positions"]])
    stage1 = EarlyExitLM(len(corpus.vocab), 2, settings_of(result).model)
    stage1.load_state_dict(load_checkpoint(result.run_dir / "stage-1-best.pt")["model"])
    with torch.no_grad():
        hidden = torch.cat([stage1.hidden(train.x[i], stop=2).reshape(-1, 16)
                            for i in range(len(train))])
    from ashem_engine.head import exit_stats  # the confidences of train tokens, at layer 2

    at_exit = exit_stats(hidden, stage1.head.weight, train.y.reshape(-1))
    torch.testing.assert_close(saved["confidences"], at_exit.confidence[saved["positions"]])
    (threshold,) = [e for e in events if e.kind == "ThresholdComputed"]
    assert threshold.split == "train" and threshold.tokens == train.tokens


def settings_of(result):
    from ashem_engine.run import read_resume_point  # noqa: F401  (same loader as resume)
    from ashem_engine.settings import settings_from_dict

    raw = json.loads((result.run_dir / "settings.json").read_text())
    return settings_from_dict(raw)


def test_sequence_context_end_to_end_under_the_sound_protocol(tmp_path):
    result, events, corpus = watched_run(
        tmp_path, "mining.split=train", "evaluation.split=test", "stages.2.context=sequence",
        "stages.2.freeze_head=true", "evaluation.inference=as_trained")
    (hard,) = [e for e in events if e.kind == "HardExamplesCollected"]
    started = [e for e in events if e.kind == "StageStarted"]
    assert started[1].context == "sequence"
    assert started[1].training_tokens == hard.count  # the loss counts hard tokens only
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["final"]["inference_modes"] == ["propagated"]
    sweep = json.loads((result.run_dir / "sweep.json").read_text())
    assert sweep["protocol"]["contexts"] == ["sequence"] and sweep["split"] == "test"
    names = [s["name"] for s in sweep["series"]]
    assert names == ["ASHEM · max-softmax", "ASHEM · exit classifier", "ASHEM · as run",
                     "stage-1 model (2 layers)"]
    assert (result.run_dir / "exit-classifiers.pt").exists()


def test_sequence_context_loss_counts_only_hard_positions():
    torch.manual_seed(0)
    model = EarlyExitLM(50, 4, ModelSettings(dim=16, heads=2, ffn_hidden=32))
    model.freeze_lower(2)
    x = torch.randint(0, 50, (2, 4, 8))
    y = torch.randint(0, 50, (2, 4, 8))
    with torch.no_grad():
        lower = torch.stack([model.hidden(x[i], stop=2) for i in range(2)])
    mask = torch.rand(2, 4, 8, generator=torch.Generator().manual_seed(1)) < 0.5
    task = MaskedSequenceTask(model, lower, mask, Batches(x, y), Batches(x, y),
                              Cascade.of([2, 4], [0.1], ("propagated",)))
    base = task.loss(0).item()
    easy = (~mask[0]).nonzero()[0]
    hard = mask[0].nonzero()[0]
    task.y[0][tuple(easy)] = (task.y[0][tuple(easy)] + 1) % 50
    assert task.loss(0).item() == base  # an easy token's target does not count
    task.y[0][tuple(hard)] = (task.y[0][tuple(hard)] + 1) % 50
    assert task.loss(0).item() != base
    # the easy tokens keep their exit state in the new layers, so a change to an easy
    # token's lower state reaches the loss only through attention (keys and values)
    assert task.tokens_in(0) == int(mask[0].sum())
