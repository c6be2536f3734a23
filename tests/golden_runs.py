"""Small runs whose events are kept in tests/golden/: the refactor's yardstick.

`python tests/golden_runs.py` rewrites the files. Do that only when a change of behaviour is
intended, and say why in the commit; tests/test_engine_golden.py compares against them.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GOLDEN = HERE / "golden"
PATHS = {"sweep", "run_dir", "checkpoint", "runs_dir", "path", "source"}

CONFIGS = {
    "spec": [],
    "sound": ["mining.split=train", "evaluation.split=test", "evaluation.inference=as_trained",
              "stages.2.context=sequence", "stages.2.freeze_head=true"],
    "sds": ["stages.3.layers=6", "stages.3.lr=1e-3", "stages.3.hard_ratio=0.2",
            "stages.3.context=token", "stages.3.max_epochs=2", "stages.3.patience=2",
            "evaluation.inference=as_trained"],
}


def scrub(value):
    """Drops clock fields and paths at every depth (summaries and settings nest them)."""
    from ashem_engine.events import TIMING_FIELDS

    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items()
                if k not in TIMING_FIELDS and k not in PATHS}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


def machine() -> dict:
    """What the float results depend on: another CPU or torch rounds differently."""
    import torch

    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in
              (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
              if line.startswith("model name")]
    return {"cpu": models[0] if models else "unknown", "torch": torch.__version__,
            "capability": torch.backends.cpu.get_cpu_capability()}


def golden_run(name: str, tmp: Path) -> dict:
    """Runs one configuration; returns its scrubbed events, summary.json and sweep.json."""
    import torch

    sys.path.insert(0, str(HERE))
    from conftest import tiny_corpus, tiny_settings
    from ashem_engine.run import run_ashem

    settings = tiny_settings(tmp, *CONFIGS[name])
    threads = torch.get_num_threads()
    events = []
    try:
        result = run_ashem(settings, [events.append], None, tiny_corpus(settings))
    finally:
        torch.set_num_threads(threads)
    assert result.status == "finished", result.error
    files = {f: json.loads((result.run_dir / f).read_text())
             for f in ("summary.json", "sweep.json")}
    return {"events": [scrub(e.to_dict()) for e in events],
            **{f: scrub(v) for f, v in files.items()}}


def main() -> None:
    import tempfile

    GOLDEN.mkdir(exist_ok=True)
    for name in CONFIGS:
        with tempfile.TemporaryDirectory() as tmp:
            data = {"machine": machine(), **golden_run(name, Path(tmp))}
        (GOLDEN / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
        print(name, len(data["events"]), "events")


if __name__ == "__main__":
    main()
