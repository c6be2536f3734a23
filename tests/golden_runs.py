"""Small runs whose events are kept in tests/golden/: the refactor's yardstick.

`python tests/golden_runs.py` rewrites the files. Do that only when a change of behaviour is
intended, and say why in the commit; tests/test_engine_golden.py compares against them.
On a machine of another CPU kind (where the comparison is skipped), record the code before a
change into a directory of your own, `python tests/golden_runs.py DIR`, and compare the code
after it with `ASHEM_GOLDEN_DIR=DIR python -m pytest tests/test_engine_golden.py`.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHIPPED = HERE / "golden"  # recorded on the machine kind named in each file
GOLDEN = Path(os.environ.get("ASHEM_GOLDEN_DIR") or SHIPPED)
sys.path.insert(0, str(ROOT / "bench"))
from compare_events import differences, scrub  # noqa: E402  (the bench's comparison of runs)

CONFIGS = {
    "spec": [],
    "sound": ["mining.split=train", "evaluation.split=test", "evaluation.inference=as_trained",
              "stages.2.context=sequence", "stages.2.freeze_head=true"],
    "sds": ["stages.3.layers=6", "stages.3.lr=1e-3", "stages.3.hard_ratio=0.2",
            "stages.3.context=token", "stages.3.max_epochs=2", "stages.3.patience=2",
            "evaluation.inference=as_trained"],
}


def compare(recorded: dict, new: dict, name: str) -> list[str]:
    """What differs between a recording and a new run, apart from timing fields, the host's
    description and paths (left out of both: older recordings kept some of them)."""
    return differences(scrub(recorded), scrub(new), name)


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
    """Runs one configuration; returns its events, summary.json and sweep.json as written."""
    import torch

    sys.path.insert(0, str(HERE))
    from tiny import tiny_corpus, tiny_settings
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
    return {"events": [e.to_dict() for e in events], **files}


def main(out: Path = GOLDEN) -> None:
    import tempfile

    out.mkdir(exist_ok=True)
    for name in CONFIGS:
        with tempfile.TemporaryDirectory() as tmp:
            data = {"machine": machine(), **scrub(golden_run(name, Path(tmp)))}
        (out / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
        print(name, len(data["events"]), "events")


if __name__ == "__main__":
    main(*map(Path, sys.argv[1:2]))
