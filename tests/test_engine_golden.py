"""Behaviour is kept: small spec, sound-protocol and SDS runs give the events, summary.json
and sweep.json recorded in tests/golden/ (tests/golden_runs.py), field by field, apart from
timing fields and paths; floats agree to a relative 1e-6."""
from __future__ import annotations

import json
import math

import pytest

from engine_support import single_thread  # noqa: F401  (autouse fixture)
from golden_runs import CONFIGS, GOLDEN, golden_run


def differences(old, new, where="", out=None):
    out = [] if out is None else out
    if isinstance(old, dict) and isinstance(new, dict):
        for k in old.keys() - new.keys():
            out.append(f"{where}.{k}: dropped")
        for k in old.keys() & new.keys():  # fields may be added, never dropped
            differences(old[k], new[k], f"{where}.{k}", out)
    elif isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            out.append(f"{where}: {len(old)} items, now {len(new)}")
        for i, (a, b) in enumerate(zip(old, new)):
            differences(a, b, f"{where}[{i}]", out)
    elif isinstance(old, float) and isinstance(new, (int, float)) and \
            not isinstance(new, bool):
        if not (math.isclose(old, new, rel_tol=1e-6, abs_tol=1e-12)
                or (math.isnan(old) and math.isnan(new))):
            out.append(f"{where}: {old!r}, now {new!r}")
    elif old != new:
        out.append(f"{where}: {old!r}, now {new!r}")
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_small_runs_give_the_recorded_events(name, tmp_path):
    old = json.loads((GOLDEN / f"{name}.json").read_text())
    new = golden_run(name, tmp_path)
    found = differences(old, new, name)
    assert not found, "\n".join(found[:20])
