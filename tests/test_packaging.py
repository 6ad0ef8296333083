"""The wheel: one top-level package, `varbench`, with its data files, and nothing
that could shadow (or be shadowed by) another project's `models` or `workers`."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True, timeout=300)
    (path,) = out.glob("varbench-*.whl")
    return path


def test_wheel_has_one_top_level_package_and_its_data(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names}
    assert top == {"varbench", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    for sub in ("models", "workers", "sweeps", "orchestrator"):
        assert f"varbench/{sub}/__init__.py" in names
    assert "varbench/sweeps/quick.yaml" in names
    assert "varbench/orchestrator/migrations/script.py.mako" in names
    assert any(n.startswith("varbench/orchestrator/migrations/versions/0001") for n in names)
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "varbench = varbench.orchestrator.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()


@pytest.mark.slow
def test_fresh_venv_with_only_the_wheel_has_no_bare_models(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    probe = ("import importlib.util as u; "
             "print([u.find_spec(m) is not None for m in "
             "('models', 'workers', 'sweeps', 'orchestrator', 'varbench.models', 'varbench.sweeps')])")
    out = subprocess.run([str(py), "-c", probe], cwd=tmp_path, check=True, capture_output=True,
                         text=True, timeout=60).stdout.strip()
    assert out == "[False, False, False, False, True, True]"
