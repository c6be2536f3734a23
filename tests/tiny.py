"""The tiny run most tests train (not a test module): its settings as `--set` overrides,
loaded, or as a command line's arguments; its synthetic corpus."""
from __future__ import annotations

from pathlib import Path

from ashem_engine.data import corpus_from_rows
from ashem_engine.settings import load_settings
from synthetic import synthetic_splits, write_corpus

# The machine sampler is off: its samples come on a clock, and many tests check a run's exact
# event sequence (tests/test_engine_machine.py runs tiny runs with it on).
TINY = [
    "run.name=tiny", "run.threads=1", "run.pause_at=[]", "run.machine_sample_s=0",
    "data.train_samples=200", "data.eval_fraction=0.25", "data.seq_len=8",
    "data.batch_size=4",
    "model.dim=16", "model.heads=2", "model.ffn_hidden=32",
    "stages.1.max_epochs=3", "stages.2.max_epochs=3", "stages.2.lr=1e-3",
]
ONE_EPOCH = ("stages.1.max_epochs=1", "stages.2.max_epochs=1")  # after TINY: a quicker run


def sets(*overrides: str) -> list[str]:
    """The overrides as a command line's arguments: --set o1 --set o2 ..."""
    return [arg for override in overrides for arg in ("--set", override)]


def tiny_overrides(tmp_path: Path, *extra: str) -> list[str]:
    """TINY on a synthetic corpus written to tmp_path/data, runs in tmp_path/runs; then
    `extra` (later overrides win)."""
    data = write_corpus(tmp_path / "data", synthetic_splits())
    return [*TINY, f"data.path={data}", f"run.runs_dir={tmp_path / 'runs'}", *extra]


def tiny_settings(tmp_path: Path, *extra: str):
    """Tiny model, synthetic corpus (a directory of the three .raw files), runs in tmp_path."""
    return load_settings(None, tiny_overrides(tmp_path, *extra))


def tiny_corpus(settings):
    return corpus_from_rows(synthetic_splits(), settings.data, "synthetic")
