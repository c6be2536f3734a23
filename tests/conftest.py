from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ashem_engine.data import corpus_from_rows  # noqa: E402
from ashem_engine.settings import load_settings  # noqa: E402
from synthetic import synthetic_splits, write_corpus  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw"
# Token caches of the tests' corpora (and of the processes they start) stay out of ~/.cache.
os.environ["ASHEM_CACHE"] = tempfile.mkdtemp(prefix="ashem-test-cache-")

TINY = [
    "run.name=tiny", "run.threads=1", "run.pause_at=[]",
    "data.train_samples=200", "data.eval_fraction=0.25", "data.seq_len=8",
    "data.batch_size=4",
    "model.dim=16", "model.heads=2", "model.ffn_hidden=32",
    "stages.1.max_epochs=3", "stages.2.max_epochs=3", "stages.2.lr=1e-3",
]


def tiny_settings(tmp_path: Path, *extra: str):
    """Tiny model, synthetic corpus (a directory of the three .raw files), runs in tmp_path."""
    data = write_corpus(tmp_path / "data", synthetic_splits())
    return load_settings(None, [*TINY, f"data.path={data}", f"run.runs_dir={tmp_path / 'runs'}",
                                *extra])


def tiny_corpus(settings):
    return corpus_from_rows(synthetic_splits(), settings.data, "synthetic")


@pytest.fixture
def tiny(tmp_path):
    return tiny_settings(tmp_path)
