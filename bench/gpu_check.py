"""The prepared GPU check of issue #22: on one CUDA GPU, in at most about 8 minutes, it runs
the steps below and prints one markdown table of what they measured.

    bench/gpu_check.sh [--dry-run] [--out FILE] [--data PATH] [--work DIR] [--budget 470]
        [--only 'spec-*,head-*']

Steps, each a subprocess with its own timeout (cut further to what is left of --budget); a
failing step becomes one row "failed: <why>" and the check goes on with the next:

  spec-bf16             the spec's run (the built-in defaults) on cuda in bf16, headless:
                        every figure of the reference table with its band, the seconds per
                        stage and the training tokens per second
  spec-bf16-torchrun-1  the same under `torch.distributed.run --nproc_per_node 1`, to see the
                        engine under torchrun on CUDA; its row "process group" says which
                        group the run reported (NCCL, or none)
  scale-*-fp32|bf16     each bench/configs/scale-*.toml, one epoch per stage, no sweep: training
                        tokens per second and the peak GPU memory (the engine runs inside
                        this script's own subprocess, which reads torch.cuda.max_memory_allocated)
  head-step-naive-vs-fused
                        one training step of the output head at the spec's shape (2,048
                        tokens, dim 64, the spec run's vocabulary): the reference's way,
                        logits materialised and F.cross_entropy, beside the engine's fused
                        head_loss, fp32 and bf16, forward and backward

--dry-run resolves every step's settings (a bad key fails here) and prints the commands,
without training and without a GPU. --data PATH passes data.path to every run (default: the
WikiText-2 copy shipped with the engine). The runs' directories stay in --work.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's engine, also where another one is installed

SPEC_VOCAB = 69_830  # WikiText-2's train and validation words; the spec run's value wins
BUDGET_S = 470  # under 8 minutes with this script's own start and the table
MIN_STEP_S = 20  # a step given less than this would only time out: skipped instead
RESULT_MARK = "GPU_CHECK_RESULT "  # a worker's last stdout line: this, then JSON
WORKER_ERROR = "gpu_check step failed: "  # a worker's one line on stderr when it fails
# The lines that say why a command failed, best first: the engine's or a worker's own line,
# then the last line of a traceback (torchrun ends its stderr with a report of its own).
WHY_LINES = (re.compile(r"^(ashem-engine: error|" + re.escape(WORKER_ERROR) + ")"),
             re.compile(r"^(?!torch\.distributed\.elastic)[\w.]*(Error|Exception|Interrupt)\b"))
Row = tuple[str, str, str, str]  # step, measure, value, note


class OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block, exit 2
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="gpu_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="resolve every step's settings and print its command; no training")
    parser.add_argument("--out", metavar="FILE", help="also write the table (markdown) here")
    parser.add_argument("--data", metavar="PATH", help="data.path for every run")
    parser.add_argument("--work", metavar="DIR", default=None,
                        help="where the runs go (default: a new ashem-gpu-check-* directory "
                        "under the system's temporary directory)")
    parser.add_argument("--budget", type=float, default=BUDGET_S, metavar="S",
                        help=f"seconds for every step together (default {BUDGET_S})")
    parser.add_argument("--only", metavar="NAMES", help="only the steps named, comma-separated; "
                        "shell patterns allowed: --only 'spec-*,head-*'")
    parser.add_argument("--step", metavar="NAME", help="run this in-process step here and "
                        "print its result (what the check runs in a subprocess)")
    parser.add_argument("--vocab", type=int, default=SPEC_VOCAB, metavar="N",
                        help="with --step head-step-naive-vs-fused: the head's vocabulary")
    return parser


# -- the steps ---------------------------------------------------------------------------------

@dataclass
class Check:
    """What every step shares: where its runs go, the data, the head's vocabulary."""
    work: Path
    data: Optional[str]
    vocab: int = SPEC_VOCAB


def sets(overrides: list[str]) -> list[str]:
    return [part for item in overrides for part in ("--set", item)]


def this_script(check: Check, step: str, *extra: str) -> list[str]:
    data = ["--data", check.data] if check.data else []
    return [sys.executable, str(Path(__file__).resolve()), "--step", step,
            "--work", str(check.work), *data, *extra]


@dataclass
class Step:
    name: str
    timeout_s: float
    settings_file: Optional[Path] = None
    overrides: list[str] = field(default_factory=list)

    def step_overrides(self) -> list[str]:
        return self.overrides

    def run_overrides(self, check: Check) -> list[str]:
        data = [f"data.path={check.data}"] if check.data else []
        return [*self.step_overrides(), *data, f"run.runs_dir={self.runs_dir(check)}"]

    def runs_dir(self, check: Check) -> Path:
        return check.work / self.name / "runs"

    def resolve(self, check: Check):
        """The step's settings, as the engine will load them (raises SettingsError)."""
        from ashem_engine.settings import load_settings
        return load_settings(self.settings_file, self.run_overrides(check))

    def command(self, check: Check) -> list[str]:
        raise NotImplementedError

    def rows(self, check: Check, stdout: str) -> list[Row]:
        raise NotImplementedError


class EngineCommand(Step):
    """`python -m ashem_engine run --quiet` (under torchrun when `processes` is set), from a
    directory without settings.toml, so the built-in defaults are the base."""

    def __init__(self, name: str, timeout_s: float, overrides: list[str],
                 processes: Optional[int] = None):
        super().__init__(name, timeout_s, None, overrides)
        self.processes = processes

    def command(self, check: Check) -> list[str]:
        launcher = [sys.executable]
        if self.processes:
            launcher += ["-m", "torch.distributed.run", "--standalone",
                         "--nproc_per_node", str(self.processes)]
        return [*launcher, "-m", "ashem_engine", "run", "--quiet",
                *sets(self.run_overrides(check))]

    def rows(self, check: Check, stdout: str) -> list[Row]:
        run_dir = only_run_dir(self.runs_dir(check))
        summary = read_summary(run_dir)
        check.vocab = summary.get("vocab_size") or check.vocab
        rows = run_rows(self.name, run_dir, summary)
        if self.processes:
            started = run_started(run_dir)
            rows.append((self.name, "process group",
                         f"{started.get('world_size')}×{started.get('backend')}",
                         "as the run reported it (RunStarted); none = no process group made"))
        return [*rows, *figure_rows(self.name, summary)]


class InProcessRun(Step):
    """A settings file run inside this script's subprocess (`--step NAME`), so that the GPU's
    peak memory can be read after it."""

    def command(self, check: Check) -> list[str]:
        return this_script(check, self.name)

    def rows(self, check: Check, stdout: str) -> list[Row]:
        result = worker_result(stdout)
        run_dir = Path(result["run_dir"])
        summary = read_summary(run_dir)
        rows = run_rows(self.name, run_dir, summary)
        rows.append((self.name, "whole run seconds", f"{summary.get('seconds', 0):.1f}",
                     "data loading, training, mining and evaluation"))
        if result["peak_allocated"] is None:
            rows.append((self.name, "peak GPU memory", "—", "no CUDA device"))
        else:
            rows.append((self.name, "peak GPU memory", gib(result["peak_allocated"]),
                         "torch.cuda.max_memory_allocated; reserved "
                         f"{gib(result['peak_reserved'])}"))
        return rows

    def describe(self, check: Check) -> str:
        """What the subprocess runs in process."""
        file = f"{self.settings_file}" if self.settings_file else "the built-in defaults"
        return f"run_ashem with {file} {shlex.join(sets(self.run_overrides(check)))}"

    def work(self, check: Check) -> dict:
        import torch
        from ashem_engine.control import RunControl
        from ashem_engine.run import run_ashem
        from ashem_engine.sinks import build_sinks

        settings = self.resolve(check)
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        result = run_ashem(settings, build_sinks(), RunControl(hold_at_boundaries=False))
        if result.status != "finished":
            raise StepFailed(result.error.message if result.error else result.status)
        return {"run_dir": str(result.run_dir),
                "peak_allocated": torch.cuda.max_memory_allocated() if cuda else None,
                "peak_reserved": torch.cuda.max_memory_reserved() if cuda else None}


class HeadStep(Step):
    """One training step of the output head, the naive way beside the fused head_loss."""

    def command(self, check: Check) -> list[str]:
        return this_script(check, self.name, "--vocab", str(check.vocab))

    def rows(self, check: Check, stdout: str) -> list[Row]:
        result = worker_result(stdout)
        shape = (f"{result['tokens']:,} tokens × dim {result['dim']} × vocabulary "
                 f"{result['vocab']:,}")
        rows = [(self.name, "shape", shape, "hidden states and targets random; loss mean CE")]
        for variant in result["variants"]:
            rows.append((self.name, f"{variant['name']} ms per step", f"{variant['ms']:.3f}",
                         f"median of {variant['repeats']}, forward + backward; peak memory "
                         f"{gib(variant['peak_allocated'])}; loss {variant['loss']:.4f}"))
        return rows

    def work(self, check: Check) -> dict:
        settings = self.resolve(check)
        tokens, dim = settings.data.batch_size * settings.data.seq_len, settings.model.dim
        return {"tokens": tokens, "dim": dim, "vocab": check.vocab,
                "variants": time_head_variants(tokens, dim, check.vocab)}


def spec_overrides(precision: str) -> list[str]:
    return ["run.device=cuda", f"run.precision={precision}"]


class ScaleRun(InProcessRun):
    """A scale-*.toml configuration for one epoch per stage, without the sweep."""

    def __init__(self, config: Path, precision: str):
        super().__init__(f"{config.stem}-{precision}", 90, config)
        self.precision = precision

    def step_overrides(self) -> list[str]:
        """Read when used, so that a broken configuration fails its own step only: one
        epoch for each stage the file has (stages.N+1 would add a stage)."""
        from ashem_engine.settings import load_settings
        stages = len(load_settings(self.settings_file).stages)
        return [*spec_overrides(self.precision), "evaluation.sweep_points=0",
                *(f"stages.{n}.max_epochs=1" for n in range(1, stages + 1))]


def all_steps() -> list[Step]:
    steps: list[Step] = [
        EngineCommand("spec-bf16", 180, spec_overrides("bf16")),
        EngineCommand("spec-bf16-torchrun-1", 180, spec_overrides("bf16"), processes=1),
    ]
    for config in sorted((ROOT / "bench" / "configs").glob("scale-*.toml")):
        for precision in ("fp32", "bf16"):
            steps.append(ScaleRun(config, precision))
    steps.append(HeadStep("head-step-naive-vs-fused", 60, None, spec_overrides("fp32")))
    return steps


def running_order(steps: list[Step]) -> list[Step]:
    """The head step (cheap, and it needs the spec run's vocabulary) right after the spec run;
    the table keeps the listed order."""
    head = [s for s in steps if isinstance(s, HeadStep)]
    rest = [s for s in steps if not isinstance(s, HeadStep)]
    return rest[:1] + head + rest[1:]


# -- reading a run -----------------------------------------------------------------------------

class StepFailed(Exception):
    """A step that did not give its result; str(error) is one line."""


def only_run_dir(runs: Path) -> Path:
    found = sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []
    if len(found) != 1:
        raise StepFailed(f"expected one run directory in {runs}, found {len(found)}")
    return found[0]


def read_summary(run_dir: Path) -> dict:
    from ashem_engine.rundir import SUMMARY_FILE

    summary = json.loads((run_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
    if summary.get("status") != "finished":
        raise StepFailed(f"the run's status is {summary.get('status')!r} ({run_dir})")
    return summary


def read_events(run_dir: Path) -> list[dict]:
    from ashem_engine.rundir import EVENTS_FILE

    with open(run_dir / EVENTS_FILE, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.endswith("\n")]


def tokens_per_s_by_stage(events: list[dict]) -> dict[int, float]:
    """Each stage's training tokens per second: the engine's figure at the end of each epoch
    (its last BatchProgress), the mean over the stage's epochs."""
    at_epoch_end: dict[tuple[int, int], float] = {}
    for e in events:
        if e["kind"] == "BatchProgress":
            at_epoch_end[(e["stage"], e["epoch"])] = e["tokens_per_s"]
    by_stage: dict[int, list[float]] = {}
    for (stage, _), rate in sorted(at_epoch_end.items()):
        by_stage.setdefault(stage, []).append(rate)
    return {stage: statistics.mean(rates) for stage, rates in by_stage.items()}


def run_started(run_dir: Path) -> dict:
    return next((e for e in read_events(run_dir) if e["kind"] == "RunStarted"), {})


def run_rows(step: str, run_dir: Path, summary: dict) -> list[Row]:
    """What the run ran on, and each stage's seconds and training tokens per second."""
    events = read_events(run_dir)
    started = next((e for e in events if e["kind"] == "RunStarted"), {})
    where = (f"{started.get('device')}, {started.get('world_size')}×{started.get('backend')}, "
             f"{started.get('precision')}, vocabulary {started.get('vocab_size', 0):,}")
    rows = [(step, "run", where, str(run_dir))]
    rates = tokens_per_s_by_stage(events)
    for stage in summary.get("stages", []):
        n = stage["stage"]
        rows.append((step, f"stage {n} training tok/s", f"{rates.get(n, 0):,.0f}",
                     f"{stage['epochs']} epoch(s), {stage['seconds']:.1f} s"))
    return rows


def figure_rows(step: str, summary: dict) -> list[Row]:
    """The reference table's figures: this run's value, the spec's, and the band's verdict
    (none where the run left the spec's set-up)."""
    from ashem_engine.reference import comparison_rows, departures

    departed = departures(summary.get("settings", {}))
    rows = []
    for label, spec, cpu, ours, _, verdict in comparison_rows(summary, banded=not departed):
        note = f"spec {spec}, ref {cpu}" + (f"; {verdict}" if verdict else "")
        rows.append((step, label, ours, note))
    if departed:
        rows.append((step, "bands", "none apply", "not the spec's set-up: " + ", ".join(departed)))
    return rows


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


# -- the head step's timing (in its worker) ----------------------------------------------------

def time_head_variants(tokens: int, dim: int, vocab: int, repeats: int = 20) -> list[dict]:
    import torch
    import torch.nn.functional as F
    from ashem_engine.head import head_loss
    from ashem_engine.precision import compute

    if not torch.cuda.is_available():
        raise StepFailed("no CUDA device is available")
    device = torch.device("cuda")
    generator = torch.Generator(device).manual_seed(0)
    h = torch.randn(tokens, dim, device=device, generator=generator).requires_grad_()
    w = (torch.randn(vocab, dim, device=device, generator=generator) * dim ** -0.5
         ).requires_grad_()
    y = torch.randint(0, vocab, (tokens,), device=device, generator=generator)
    naive = lambda: F.cross_entropy(h @ w.T, y)  # noqa: E731 - the reference's two lines
    fused = lambda: head_loss(h, w, y)  # noqa: E731
    out = []
    for precision in ("fp32", "bf16"):
        for name, loss_of in (("naive (logits + F.cross_entropy)", naive),
                              ("fused head_loss", fused)):
            with compute(precision, device):
                out.append({"name": f"{precision} {name}", "repeats": repeats,
                            **timed_step(loss_of, (h, w), repeats)})
    return out


def timed_step(loss_of: Callable, params: tuple, repeats: int) -> dict:
    """Median milliseconds of loss and backward, synchronised; the peak memory of one step."""
    import torch

    def step():
        for p in params:
            p.grad = None
        loss = loss_of()
        loss.backward()
        return loss

    for _ in range(3):  # warm-up: kernels chosen, memory cached
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        loss = step()
        torch.cuda.synchronize()
        times.append(1000 * (time.perf_counter() - started))
    return {"ms": statistics.median(times), "loss": loss.item(),
            "peak_allocated": torch.cuda.max_memory_allocated()}


# -- running the steps -------------------------------------------------------------------------

def subprocess_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    return env


def run_command(argv: list[str], cwd: Path, timeout_s: float) -> str:
    """The command's stdout; StepFailed with one line if it fails or runs out of time. It runs
    in a session of its own, so a timeout stops torchrun's workers too."""
    process = subprocess.Popen(argv, cwd=cwd, env=subprocess_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise StepFailed(f"timed out after {timeout_s:.0f} s") from None
    if process.returncode != 0:
        raise StepFailed(f"{why(stderr or stdout)} (exit {process.returncode})")
    return stdout


def why(output: str) -> str:
    """The line of a failed command's output that says why it failed, without our prefix."""
    lines = [line.strip() for line in output.splitlines() if re.search(r"\w", line)]
    for pattern in WHY_LINES:
        found = [line for line in lines if pattern.match(line)]
        if found:
            return clipped(found[-1].removeprefix(WORKER_ERROR))
    return clipped(lines[-1] if lines else "no output")


def clipped(line: str, limit: int = 240) -> str:
    return line if len(line) <= limit else line[:limit - 1] + "…"


def worker_result(stdout: str) -> dict:
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    raise StepFailed(f"no result line: {why(stdout)}")


def run_step(step: Step, check: Check, seconds_left: float) -> list[Row]:
    timeout = min(step.timeout_s, seconds_left)
    if timeout < MIN_STEP_S:
        return [(step.name, "status", f"skipped: {seconds_left:.0f} s of the budget left", "")]
    print(f"gpu_check: {step.name} (timeout {timeout:.0f} s) ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    try:
        step.resolve(check)
        cwd = check.work / step.name
        cwd.mkdir(parents=True, exist_ok=True)
        rows = step.rows(check, run_command(step.command(check), cwd, timeout))
        status = "ok"
    except Exception as e:  # noqa: BLE001 - any failure is this step's row, the rest goes on
        rows, status = [], f"failed: {one_line(e)}"
    wall = time.perf_counter() - started
    print(f"gpu_check: {step.name}: {status} ({wall:.1f} s)", file=sys.stderr, flush=True)
    return [(step.name, "status", status, f"{wall:.1f} s wall clock"), *rows]


def one_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return (f"{type(e).__name__}: " if not isinstance(e, StepFailed) else "") + \
        (text[-1] if text else type(e).__name__)


def gpu_row() -> Row:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                               "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=30)
        found = why(done.stdout) if done.returncode == 0 else why(done.stderr)
    except (OSError, subprocess.TimeoutExpired) as e:
        found = f"nvidia-smi: {e}"
    return ("machine", "GPU", found, "nvidia-smi: name, memory, driver")


def markdown(rows: list[Row]) -> str:
    lines = ["| step | measure | value | note |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(cell.replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def run_check(steps: list[Step], check: Check, budget: float) -> tuple[list[Row], bool]:
    deadline = time.perf_counter() + budget
    results: dict[str, list[Row]] = {}
    for step in running_order(steps):
        results[step.name] = run_step(step, check, deadline - time.perf_counter())
    rows = [gpu_row()] + [row for step in steps for row in results[step.name]]
    failed = any(row[1] == "status" and row[2] != "ok" for row in rows)
    return rows, failed


def dry_run(steps: list[Step], check: Check) -> int:
    """Every step's settings resolved and its command printed; 1 if any did not resolve."""
    bad = 0
    for step in steps:
        try:
            step.resolve(check)
        except Exception as e:  # noqa: BLE001 - SettingsError, or a settings file missing
            print(f"{step.name}: failed: {one_line(e)}")
            bad += 1
            continue
        print(f"{step.name} (timeout {step.timeout_s:.0f} s, in {check.work / step.name}): "
              f"{shlex.join(step.command(check))}")
        if isinstance(step, InProcessRun):
            print(f"    which runs {step.describe(check)}")
    print(f"dry run: {len(steps) - bad} of {len(steps)} steps resolved; nothing was trained")
    return 1 if bad else 0


def work_step(name: str, check: Check) -> int:
    """`--step NAME`: one in-process step, its result as the last stdout line."""
    step = next((s for s in all_steps() if s.name == name), None)
    if not isinstance(step, (InProcessRun, HeadStep)):
        print(f"gpu_check.py: error: --step {name!r} is not an in-process step", file=sys.stderr)
        return 2
    try:
        result = step.work(check)
    except Exception as e:  # noqa: BLE001 - the parent reports this line in its table
        print(WORKER_ERROR + one_line(e), file=sys.stderr)
        return 1
    print(RESULT_MARK + json.dumps(result))
    return 0


def chosen_steps(steps: list[Step], only: Optional[str]) -> list[Step]:
    if not only:
        return steps
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    return [s for s in steps if any(fnmatch.fnmatchcase(s.name, p) for p in patterns)]


def default_work_dir() -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%S")
    return Path(tempfile.gettempdir()) / f"ashem-gpu-check-{stamp}"


def main(argv: Optional[list[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        import ashem_engine.settings  # noqa: F401 - fail here, in one line, without the engine
    except ImportError as e:
        parser.exit(2, f"{parser.prog}: error: cannot import the engine ({e}); "
                       f"run 'pip install -e .' in {ROOT}\n")
    data = str(Path(args.data).resolve()) if args.data else None  # the runs start elsewhere
    check = Check(Path(args.work).resolve() if args.work else default_work_dir(), data,
                  args.vocab)
    if args.step:
        return work_step(args.step, check)
    steps = chosen_steps(all_steps(), args.only)
    if not steps:
        parser.error(f"--only {args.only!r} names no step")
    if args.out and not Path(args.out).resolve().parent.is_dir():
        parser.error(f"--out {args.out!r}: its directory does not exist")
    if args.dry_run:
        return dry_run(steps, check)
    check.work.mkdir(parents=True, exist_ok=True)
    rows, failed = run_check(steps, check, args.budget)
    table = markdown(rows)
    print(table)
    if args.out:
        Path(args.out).write_text(table + "\n", encoding="utf-8")
    print(f"gpu_check: runs in {check.work}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
