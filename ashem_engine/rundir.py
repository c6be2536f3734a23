"""The run directory: `runs/<UTC timestamp>-<name>/`, written atomically, never overwritten."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, BinaryIO, Callable

# The files of a run directory: a public layout, named here only.
SETTINGS_FILE = "settings.json"  # rewritten when steering changes a setting
EVENTS_FILE = "events.jsonl"
SUMMARY_FILE = "summary.json"
SWEEP_FILE = "sweep.json"
PROGRESS_FILE = "progress.pt"  # the resume point
COMMAND_LOG = "commands.jsonl"  # what dashboards ask of the run, appended (command_file.py)
COMMAND_FILE = "control.json"  # the same, one at a time, from older dashboards (still read)
CLASSIFIERS_FILE = "exit-classifiers.pt"
BEST_WEIGHTS_FILE = "stage-{}-best.pt"  # .format(stage)
HARD_TOKENS_FILE = "stage-{}-hard.pt"  # .format(stage)
STAGE_ONE_END_FILE = "stage-1-end.pt"  # the resume point where stage 1 ended (share.py)


class RunDirError(Exception):
    """The run directory cannot be made or written. str(error) is one line for a person."""


def create_run_dir(runs_dir: str | os.PathLike, name: str) -> Path:
    root = Path(runs_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"run.runs_dir {str(root)!r} cannot be created: {e.strerror}") from None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for attempt in range(1, 1001):
        path = root / (f"{stamp}-{name}" + (f"-{attempt}" if attempt > 1 else ""))
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except OSError as e:
            raise RunDirError(f"run.runs_dir {str(root)!r} is not writable: {e.strerror}") from None
        probe_writable(path)
        return path
    raise RunDirError(f"too many runs named {name!r} this second in {str(root)!r}")


def probe_writable(path: Path, need_bytes: int = 64 << 20) -> None:
    """Fails early, before any training, if the directory cannot take the run's files."""
    try:
        atomic_write(path / ".probe", lambda f: f.write(b"ok"))
        (path / ".probe").unlink()
        free = os.statvfs(path).f_bavail * os.statvfs(path).f_frsize
    except OSError as e:
        raise RunDirError(f"run directory {str(path)!r} is not writable: {e.strerror}") from None
    if free < need_bytes:
        raise RunDirError(f"run directory {str(path)!r} has only {free >> 20} MiB free; "
                          f"a run needs at least {need_bytes >> 20} MiB")


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Writes through `write(file)` into a temporary file beside `path`, syncs it, then
    renames it over `path`: a reader (or a kill -9) sees the old file or the new, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=2, allow_nan=True) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch  # here, so that the command log (command_file.py) can be written without it

    atomic_write(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: str | os.PathLike, required: str = "model") -> dict:
    """Loads a checkpoint with weights_only=True: tensors and plain containers, no code."""
    unreadable = (f"checkpoint {str(path)!r} is not a readable ashem checkpoint (corrupt, "
                  "truncated or written by another program); start a new run, or resume "
                  "another run directory")
    import torch

    try:
        with warnings.catch_warnings():  # torch warns about foreign pickles; we refuse them
            warnings.simplefilter("ignore")
            data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist") from None
    except Exception:  # truncated zip, pickle with code, ...: torch's own advice is unsafe
        raise CheckpointError(unreadable) from None
    if not isinstance(data, dict) or required not in data:
        raise CheckpointError(unreadable)
    return data


class CheckpointError(Exception):
    """A checkpoint that is missing, truncated, unsafe or of the wrong shape."""
