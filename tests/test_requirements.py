"""The install's pins and FAISS choice: requirements.txt is the one place of truth (a Space installs it alone), and
`make setup` installs faiss-gpu where `nvidia-smi -L` finds a GPU and faiss-cpu, with no CUDA wheels, elsewhere."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAISS_LINE = re.compile(r"^(faiss-(?:cpu|gpu))==([^;\s]+)\s*;\s*(.+)$")
needs_make = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def faiss_lines() -> dict[str, tuple[str, str]]:
    lines = (ROOT / "requirements.txt").read_text().splitlines()
    return {m[1]: (m[2], m[3]) for m in map(FAISS_LINE.match, lines) if m}


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """The Makefile and requirements in a folder whose .venv already has a python (so make creates no venv), and a
    bin/ folder for a stand-in nvidia-smi."""
    for name in ("Makefile", "requirements.txt", "requirements-models.txt", "requirements-dev.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(sys.executable)
    (tmp_path / "bin").mkdir()
    return tmp_path


def make(folder: Path, *args: str, gpu: bool) -> subprocess.CompletedProcess:
    """`make ARGS` where `nvidia-smi -L` succeeds (gpu) or fails as it does without a GPU."""
    smi = folder / "bin" / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200'\n" if gpu else
                   "#!/bin/sh\necho 'NVIDIA-SMI has failed: no devices were found'\nexit 6\n")
    smi.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "TOKEN_LAB_FAISS"}
    env["PATH"] = f"{folder / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(["make", "-s", *args], cwd=folder, env=env, capture_output=True, text=True, timeout=60)


def test_faiss_builds_share_one_version_and_split_the_platforms():
    found = faiss_lines()
    assert set(found) == {"faiss-cpu", "faiss-gpu"}
    assert found["faiss-cpu"][0] == found["faiss-gpu"][0]
    assert found["faiss-gpu"][1] == 'sys_platform == "linux" and platform_machine == "x86_64"'
    assert found["faiss-cpu"][1] == 'sys_platform != "linux" or platform_machine != "x86_64"'


@needs_make
def test_cpu_install_is_requirements_txt_with_faiss_cpu_at_the_same_pin(checkout: Path):
    assert make(checkout, ".venv/requirements-cpu.txt", gpu=False).returncode == 0
    cpu = (checkout / ".venv" / "requirements-cpu.txt").read_text().splitlines()
    full = (ROOT / "requirements.txt").read_text().splitlines()
    assert [line for line in cpu if line.startswith("faiss")] == [f"faiss-cpu=={faiss_lines()['faiss-gpu'][0]}"]
    assert [line for line in cpu if not line.startswith("faiss")] == [x for x in full if not x.startswith("faiss")]


@needs_make
@pytest.mark.parametrize(("gpu", "forced", "installed", "removed"), [
    (False, None, ".venv/requirements-cpu.txt", "faiss-gpu"),
    (True, None, ".venv/requirements-gpu.txt", "faiss-cpu"),
    (False, "gpu", ".venv/requirements-gpu.txt", "faiss-cpu"),
    (True, "cpu", ".venv/requirements-cpu.txt", "faiss-gpu"),
])
def test_setup_picks_faiss_by_nvidia_smi_unless_forced(checkout: Path, gpu: bool, forced: str | None,
                                                       installed: str, removed: str):
    args = ["-n", "setup"] + ([f"TOKEN_LAB_FAISS={forced}"] if forced else [])
    plan = make(checkout, *args, gpu=gpu).stdout
    assert f"install -r {installed}" in plan
    assert f"uninstall -y {removed}" in plan  # before installing: both builds write the same `faiss` package
    assert plan.index(f"uninstall -y {removed}") < plan.index(f"install -r {installed}")


@needs_make
def test_setup_runs_again_when_requirements_change(checkout: Path):
    flavour = checkout / ".venv" / ".installed-cpu"
    assert make(checkout, ".venv/requirements-cpu.txt", gpu=False).returncode == 0
    flavour.touch()
    assert "pip" not in make(checkout, "-n", "setup", gpu=False).stdout
    os.utime(checkout / "requirements.txt", (flavour.stat().st_mtime + 10,) * 2)
    assert "install -r .venv/requirements-cpu.txt" in make(checkout, "-n", "setup", gpu=False).stdout


@needs_make
def test_an_unknown_choice_is_named(checkout: Path):
    result = make(checkout, "-n", "setup", "TOKEN_LAB_FAISS=rocm", gpu=False)
    assert result.returncode != 0 and "TOKEN_LAB_FAISS must be cpu or gpu, not 'rocm'" in result.stderr
