"""torchrun as it runs beyond two CPU processes on one disk: a process group made for CUDA
(NCCL's device rule, checked on CPUs by tests/as_on_cuda.py), two nodes that share no disk,
and a rank that hangs rather than dies. Figures are held to one process' within 1e-5, as in
test_engine_scale.py (which says why: TWO_PROCESSES)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine_support import no_job_left_running, single_thread, started  # noqa: F401
from synthetic import synthetic_splits, write_corpus
from test_engine_cli import env
from test_engine_scale import SOUND, assert_as_one_process, only_run_dir, rank_pid, wait_for
from tiny import TINY, sets, tiny_corpus, tiny_settings

from ashem_engine.command_file import write_command
from ashem_engine.run import run_ashem

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def launch(cwd: Path, *args: str, module: str = "ashem_engine", nodes: str = "--standalone",
           procs: int = 2) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", *nodes.split(),
           f"--nproc_per_node={procs}", "-m", module, *args]
    return started(subprocess.Popen(cmd, cwd=cwd, env={**env(), "PYTHONPATH": f"{REPO}:{HERE}"},
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    start_new_session=True))


def run_args(data: Path, runs: str, *extra: str) -> list[str]:
    return ["run", "--quiet", *sets(*TINY, f"data.path={data}", f"run.runs_dir={runs}", *extra)]


def as_one_process(summary: dict, tmp_path: Path, *protocol: str) -> None:
    one = tiny_settings(tmp_path / "one", *protocol)
    assert_as_one_process(summary, run_ashem(one, [], None, tiny_corpus(one)).summary)


def test_a_group_made_for_cuda_serves_every_collective_of_a_run(tmp_path):
    """A group made as plain "nccl" fails the first host-side sum of a training step."""
    data = write_corpus(tmp_path / "data", synthetic_splits())
    job = launch(tmp_path, *run_args(data, str(tmp_path / "runs")), module="as_on_cuda")
    out, err = job.communicate(timeout=240)
    assert job.returncode == 0, err[-3000:]
    assert err.count("asked for backend cpu:gloo,cuda:nccl") == 2
    summary = json.loads((only_run_dir(tmp_path / "runs") / "summary.json").read_text())
    as_one_process(summary, tmp_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(tmp_path: Path, *args: str) -> list[subprocess.CompletedProcess]:
    """The same command on two "nodes" (one process each) on 127.0.0.1, each in an empty
    working directory of its own: nothing on disk is shared but the data."""
    port, jobs = free_port(), []
    for node in (0, 1):
        cwd = tmp_path / f"node{node}"
        cwd.mkdir(exist_ok=True)
        nodes = f"--nnodes=2 --node_rank={node} --master_addr=127.0.0.1 --master_port={port}"
        jobs.append(launch(cwd, *args, nodes=nodes, procs=1))
    return [subprocess.CompletedProcess(j.args, j.wait(timeout=300), *j.communicate())
            for j in jobs]


def test_two_nodes_without_a_shared_disk_run_cancel_and_resume_as_one_process(tmp_path):
    data = write_corpus(tmp_path / "data", synthetic_splits())
    held = run_args(data, "runs", *SOUND, 'run.pause_at=["mining-1"]')
    node0 = tmp_path / "node0"
    node0.mkdir()

    def abort_when_held() -> None:
        run_dir = wait_for(lambda: next((node0 / "runs").glob("*"), None), 120)
        log = run_dir / "events.jsonl"
        wait_for(lambda: log.exists() and '"boundary": "mining-1"' in log.read_text(), 180)
        write_command(run_dir, "abort", writer="test")

    import threading
    aborter = threading.Thread(target=abort_when_held)
    aborter.start()
    first = two_nodes(tmp_path, *held, "--hold")
    aborter.join()
    assert all(p.returncode != 0 for p in first)  # torchrun reports its workers' 130 as 1
    run_dir = only_run_dir(node0 / "runs")
    last = json.loads((run_dir / "events.jsonl").read_text().splitlines()[-1])
    assert last["kind"] == "RunCancelled", first[0].stderr[-2000:]
    assert not (tmp_path / "node1" / "runs").exists()  # node 1 wrote nothing
    relative = str(run_dir.relative_to(node0))  # node 1 has no such directory
    second = two_nodes(tmp_path, "resume", "--quiet", relative)
    assert [p.returncode for p in second] == [0, 0], second[1].stderr[-3000:]
    assert not (tmp_path / "node1" / "runs").exists()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    as_one_process(summary, tmp_path, *SOUND)


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_a_rank_that_hangs_ends_the_run_after_the_peer_timeout(tmp_path):
    data = write_corpus(tmp_path / "data", synthetic_splits())
    name = f"hung{os.getpid()}"
    job = launch(tmp_path, *run_args(data, str(tmp_path / "runs"), f"run.name={name}",
                                     "run.peer_timeout_s=5", "data.train_samples=2000",
                                     "stages.1.max_epochs=6", "stages.1.patience=6"))
    run_dir = wait_for(lambda: next((tmp_path / "runs").glob("*"), None), 60)
    wait_for(lambda: (run_dir / "progress.pt").exists(), 120)  # an epoch is finished
    hung = wait_for(lambda: rank_pid(name, 1), 10)
    os.kill(hung, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        wait_for(lambda: '"RunFailed"' in (run_dir / "events.jsonl").read_text(), 60)
        waited = time.monotonic() - stopped
    finally:
        os.kill(hung, signal.SIGCONT)
    _, err = job.communicate(timeout=120)
    assert 4 < waited < 40, waited
    last = json.loads((run_dir / "events.jsonl").read_text().splitlines()[-1])
    assert (last["kind"], last["error_kind"]) == ("RunFailed", "distributed")
    ours = [line for line in err.splitlines() if line.startswith("ashem-engine: error (rank 0")]
    assert len(ours) == 1 and "stopped answering" in ours[0], err[-3000:]
