"""Whether two runs reported the same thing: their events.jsonl, summary.json and sweep.json
field by field, apart from timing fields, the host's description and load (MachineSampled,
memory peaks) and paths; floats to a relative 1e-6.

    python bench/compare_events.py RUN_DIR_A RUN_DIR_B

A field that B adds is fine (the event log only grows); one that B lacks is a difference.
Exit code 0 when there is none. tests/test_engine_golden.py uses the same comparison.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from ashem_engine.events import MACHINE_EVENTS, MACHINE_FIELDS, TIMING_FIELDS
from ashem_engine.rundir import EVENTS_FILE, SUMMARY_FILE, SWEEP_FILE

PATHS = {"sweep", "run_dir", "checkpoint", "runs_dir", "path", "source", "data_source"}
LEFT_OUT = TIMING_FIELDS | MACHINE_FIELDS | PATHS


def scrub(value):
    """Drops clock fields, the host's description and paths at every depth (summaries and
    settings nest them), and the events that sample the host's load (their count is the
    clock's)."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k not in LEFT_OUT}
    if isinstance(value, list):
        return [scrub(v) for v in value
                if not (isinstance(v, dict) and v.get("kind") in MACHINE_EVENTS)]
    return value


def differences(old, new, where: str = "", out=None, rel_tol: float = 1e-6) -> list[str]:
    out = [] if out is None else out
    if isinstance(old, dict) and isinstance(new, dict):
        out += [f"{where}.{k}: dropped" for k in old.keys() - new.keys()]
        for k in old.keys() & new.keys():
            differences(old[k], new[k], f"{where}.{k}", out, rel_tol)
    elif isinstance(old, list) and isinstance(new, list):
        if len(old) != len(new):
            out.append(f"{where}: {len(old)} items, now {len(new)}")
        for i, (a, b) in enumerate(zip(old, new)):
            differences(a, b, f"{where}[{i}]", out, rel_tol)
    elif isinstance(old, float) and isinstance(new, (int, float)) and \
            not isinstance(new, bool):
        if not (math.isclose(old, new, rel_tol=rel_tol, abs_tol=1e-12)
                or (math.isnan(old) and math.isnan(new))):
            out.append(f"{where}: {old!r}, now {new!r}")
    elif old != new:
        out.append(f"{where}: {old!r}, now {new!r}")
    return out


def reported(run_dir: Path) -> dict:
    events = [json.loads(line) for line in (run_dir / EVENTS_FILE).read_text().splitlines()
              if line.strip()]
    files = {f: json.loads((run_dir / f).read_text())
             for f in (SUMMARY_FILE, SWEEP_FILE) if (run_dir / f).exists()}
    return scrub({"events": events, **files})


def main(a: str, b: str) -> int:
    old, new = reported(Path(a)), reported(Path(b))
    found = differences(old, new, "run")
    print(f"{len(old['events'])} events / {len(new['events'])} events compared, "
          f"summary.json and sweep.json too: {len(found)} differences")
    for line in found[:40]:
        print("  " + line)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
