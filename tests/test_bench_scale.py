"""The scale benches of issue #22 on this CPU: bench/make_corpus.py writes exact, seeded
corpora the engine reads, and bench/gpu_check.py resolves every step of the GPU check and
reads a finished run into its table (the GPU itself is not needed here)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from test_engine_cli import cli, env
from tiny import ONE_EPOCH, TINY, sets

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"wiki.train.raw": 20_000, "wiki.valid.raw": 5_000, "wiki.test.raw": 3_003}
SCALE_CONFIGS = sorted(p.stem for p in (ROOT / "bench" / "configs").glob("scale-*.toml"))


def script(name: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "bench" / name), *args], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=timeout)


def make_small_corpus(directory: Path, seed: int = 0) -> subprocess.CompletedProcess:
    return script("make_corpus.py", str(directory), "--train-tokens", "20000",
                  "--valid-tokens", "5000", "--test-tokens", "3003", "--seed", str(seed))


def digests(directory: Path) -> dict[str, str]:
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in SMALL}


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("corpus") / "seed-0"
    p = make_small_corpus(directory)
    assert p.returncode == 0, p.stderr
    assert "20,000 train, 5,000 validation, 3,003 test tokens" in p.stdout
    return directory


# -- make_corpus -------------------------------------------------------------------------------

def test_make_corpus_writes_exactly_the_words_asked_for(small_corpus):
    for name, words in SMALL.items():
        text = (small_corpus / name).read_text(encoding="utf-8")
        rows = text.splitlines()
        assert sum(len(row.lower().split()) for row in rows) == words  # the engine's tokens
        assert len(rows) == -(-words // 100) and all(row == row.lower() for row in rows)
        assert text.endswith("\n")


def test_make_corpus_is_deterministic_for_a_seed(small_corpus, tmp_path):
    assert make_small_corpus(tmp_path / "again").returncode == 0
    assert make_small_corpus(tmp_path / "other", seed=1).returncode == 0
    same, other = digests(tmp_path / "again"), digests(tmp_path / "other")
    assert same == digests(small_corpus)
    assert all(other[name] != same[name] for name in SMALL)


@pytest.mark.parametrize("args, says", [
    (["--train-tokens", "0"], "--train-tokens must be at least 1"),
    (["--vocab", "10000000"], "--vocab must be between 1 and"),
    (["--seed", "-1"], "--seed must be 0 or more"),
    (["--test-tokens", "many"], "invalid int value"),
])
def test_make_corpus_bad_arguments_are_one_line_and_exit_2(tmp_path, args, says):
    p = script("make_corpus.py", str(tmp_path / "out"), *args)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.splitlines()) == 1 and says in p.stderr, p.stderr
    assert not (tmp_path / "out").exists()


def test_make_corpus_refuses_a_file_as_its_directory(tmp_path):
    (tmp_path / "file").write_text("x")
    p = script("make_corpus.py", str(tmp_path / "file"))
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1
    assert "is not a directory" in p.stderr


# -- the engine reads the corpus; gpu_check reads the run --------------------------------------

def test_the_engine_runs_on_the_corpus_and_gpu_check_reads_the_run(small_corpus, tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_check

    overrides = [*TINY, *ONE_EPOCH, "evaluation.sweep_points=0"]
    check = gpu_check.Check(tmp_path / "work", str(small_corpus))
    step = gpu_check.EngineCommand("tiny", 120, overrides)
    p = cli(tmp_path, "run", "--quiet", *sets(*step.run_overrides(check)))
    assert p.returncode == 0, p.stderr
    (run_dir,) = step.runs_dir(check).iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["data_source"].endswith(small_corpus.name)

    rows = step.rows(check, p.stdout)
    measures = {measure: value for _, measure, value, _ in rows}
    assert measures["run"].startswith("cpu, 1×none, fp32, vocabulary ")
    assert float(measures["stage 1 training tok/s"].replace(",", "")) > 0
    assert measures["final PPL"] == f"{summary['final']['ppl']:.2f}"
    assert measures["bands"] == "none apply"  # a tiny model is not the spec's set-up
    assert check.vocab == summary["vocab_size"]
    table = gpu_check.markdown(rows).splitlines()
    assert table[0] == "| step | measure | value | note |"
    assert all(line.count("|") == 5 for line in table)


# -- gpu_check --dry-run ----------------------------------------------------------------------

def test_gpu_check_dry_run_lists_every_step_without_a_gpu(tmp_path):
    p = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--dry-run",
                        "--work", str(tmp_path / "work"), "--data", str(tmp_path)],
                       cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    step_lines = {line.split(" ", 1)[0]: line for line in lines if not line.startswith(" ")}
    spec = step_lines["spec-bf16"]
    assert "-m ashem_engine run --quiet" in spec and "run.device=cuda" in spec
    assert "run.precision=bf16" in spec and f"data.path={tmp_path}" in spec
    torchrun = step_lines["spec-bf16-torchrun-1"]
    assert "torch.distributed.run --standalone --nproc_per_node 1 -m ashem_engine" in torchrun
    assert len(SCALE_CONFIGS) == 3
    for config in SCALE_CONFIGS:
        for precision in ("fp32", "bf16"):
            assert f"--step {config}-{precision}" in step_lines[f"{config}-{precision}"]
    head = step_lines["head-step-naive-vs-fused"]
    assert "--step head-step-naive-vs-fused" in head and "--vocab 69830" in head
    # one epoch per stage the configuration has, never a stage added
    scale = "\n".join(lines)
    assert "scale-ashem-4-8.toml --set run.device=cuda --set run.precision=fp32" in scale
    ashem = next(line for line in lines if "which runs" in line and "scale-ashem-4-8" in line)
    assert "stages.2.max_epochs=1" in ashem
    scratch = next(line for line in lines if "which runs" in line and "scale-scratch-8" in line)
    assert "stages.1.max_epochs=1" in scratch and "stages.2." not in scratch
    assert lines[-1] == "dry run: 9 of 9 steps resolved; nothing was trained"
    assert not (tmp_path / "work").exists()


def test_gpu_check_dry_run_fails_on_a_bad_setting(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_check

    steps = gpu_check.all_steps()
    steps[0].overrides = [*steps[0].overrides, "run.no_such_key=1"]
    check = gpu_check.Check(tmp_path / "work", None)
    assert gpu_check.dry_run(steps, check) == 1


def test_gpu_check_bad_arguments_are_one_line_and_exit_2(tmp_path):
    for args in (["--only", "nothing-*"], ["--out", str(tmp_path / "no" / "t.md")],
                 ["--budget", "soon"]):
        p = script("gpu_check.py", "--dry-run", *args)
        assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, (args, p.stderr)
