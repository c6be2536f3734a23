from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import tiny_settings  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "wikitext-2-raw"
# Token caches of the tests' corpora (and of the processes they start) stay out of ~/.cache.
os.environ["ASHEM_CACHE"] = tempfile.mkdtemp(prefix="ashem-test-cache-")


@pytest.fixture
def tiny(tmp_path):
    return tiny_settings(tmp_path)
