"""The protocol settings that exist already: where hard tokens are mined, where the final
report is made, and a frozen shared head."""
from __future__ import annotations

import torch

from ashem_engine.run import run_ashem
from ashem_engine.rundir import load_checkpoint
from conftest import tiny_corpus, tiny_settings


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
