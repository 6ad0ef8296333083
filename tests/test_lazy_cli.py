"""The CLI's fixed cost: --help loads no heavy module, and the torch-free names
the CLI's choices come from cannot drift from the registries."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "ray", "mlflow", "optuna", "sqlalchemy")

# build the Typer app, render a help page, report which heavy modules got loaded
PROBE = """
import json, sys
from typer.testing import CliRunner
from varbench.orchestrator.cli import app
res = CliRunner().invoke(app, sys.argv[1:])
loaded = sorted({m.split(".")[0] for m in sys.modules} & set(json.loads(sys.stdin.read())))
print(json.dumps({"code": res.exit_code, "out": res.output, "loaded": loaded}))
"""


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["trial", "--help"],
                                  ["frontier", "--help"]])
def test_help_imports_no_heavy_module(argv):
    proc = subprocess.run([sys.executable, "-c", PROBE, *argv], input=json.dumps(HEAVY),
                          capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["code"] == 0 and "Usage: varbench" in got["out"], got["out"]
    assert got["loaded"] == [], f"--help imported {got['loaded']}"


def test_trial_help_fits_80_columns():
    """Choice lists stay whole (never split mid-word) and no line passes 80 columns."""
    from typer.testing import CliRunner

    from varbench.models.config import INTERPOLATION_NAMES
    from varbench.orchestrator.cli import app

    out = CliRunner().invoke(app, ["trial", "--help"], env={"COLUMNS": "80"}).output
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "<" + "|".join(sorted(INTERPOLATION_NAMES)) + ">" in out


def test_torch_free_names_equal_the_registries():
    from varbench.models import (
        attention,
        config,
        families,
        flowar,
        inputs,
        interp,
        metrics,
        targets,
    )
    from varbench.models import var as var_module

    assert set(config.FAMILY_NAMES) == set(families.FAMILIES)
    assert set(config.TARGET_NAMES) == set(targets.TARGETS)
    assert set(config.INTERPOLATION_NAMES) == set(interp.INTERPOLATIONS)
    # the tuples the modules use are the very objects in models.config (one home)
    assert attention.BACKENDS is config.BACKENDS and inputs.INPUTS is config.INPUTS
    assert flowar.SOLVERS is config.SOLVERS and flowar.FLOW_STEPS == config.FLOW_STEPS
    assert metrics.DEFAULT_P == config.DEFAULT_P and var_module.VARConfig is config.VARConfig


def test_progress_line_keeps_counts_whole_at_80_columns():
    import io

    from rich.console import Console

    from varbench.orchestrator.cli import progress_bar

    out = io.StringIO()
    with progress_bar(Console(file=out, width=80)) as bar:
        task = bar.add_task("sweep", total=20, front="")
        bar.update(task, completed=20,
                   front="L=1 mlp: ε=0.035 at N=882; L=2 mlp: ε=0.035 at N=4,581; L=4 mlp: …")
    lines = out.getvalue().splitlines()
    assert lines and all(len(line) <= 80 for line in lines)
    assert "20/20" in lines[-1] and "L=1 mlp" in lines[-1]


def test_the_console_script_freezes_the_heap_as_it_exits(monkeypatch):
    """The last collection of an exiting ``varbench`` is spared (``_exit_quickly``),
    whatever the command's outcome; ``app`` run in-process never freezes."""
    import gc

    from varbench.orchestrator import cli

    calls = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    monkeypatch.setattr("varbench.orchestrator.submit.use_token_if_given", lambda: None)
    monkeypatch.setattr("varbench.orchestrator.submit.load_shipped_secrets", lambda: None)

    def fails():
        raise SystemExit(2)

    monkeypatch.setattr(cli, "app", fails)
    with pytest.raises(SystemExit):
        cli.main()
    assert calls == ["freeze"]


# write rows through the store in WAL mode, exit the way the console script does, and
# leave the engine open (as a sweep's are)
WAL_EXIT = """
import sys
from varbench.orchestrator.cli import _exit_quickly
from varbench.orchestrator.store import ResultsStore
store = ResultsStore("sqlite:///" + sys.argv[1])
store.migrate()
keep = store  # never closed
_exit_quickly()
"""


def test_a_frozen_exit_leaves_the_results_in_the_database_file_itself(tmp_path):
    """Copied alone, without its ``-wal`` file, the database still holds what was
    written: the exit checkpoints it before it freezes the heap."""
    import shutil
    import sqlite3

    db = tmp_path / "varbench.db"
    subprocess.run([sys.executable, "-c", WAL_EXIT, str(db)], check=True, timeout=120)
    alone = tmp_path / "copy" / "varbench.db"
    alone.parent.mkdir()
    shutil.copy(db, alone)
    con = sqlite3.connect(alone)
    tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
    con.close()
    assert {"vb_sweeps", "vb_cells", "vb_trials"} <= tables


@pytest.mark.parametrize("up_before", [False, True])
def test_run_leaves_ray_itself_only_where_it_started_it(monkeypatch, tmp_path, up_before):
    """``varbench run`` calls ``cluster.shutdown`` after printing where Ray was not up
    before the command (it started or joined it); a cluster already up stays up."""
    import types

    import ray
    from typer.testing import CliRunner

    from tests.conftest import TINY
    from varbench.orchestrator import cli, cluster
    from varbench.orchestrator import driver as driver_mod

    class FakeDriver:
        def __init__(self, *args, **kwargs):
            pass

        def preflight(self):
            pass

        def run(self):
            return types.SimpleNamespace(interrupted=False, trials_recorded=0, checks_run=0,
                                         seconds=0.0, compute_seconds=0.0)

    left = []
    monkeypatch.setattr(driver_mod, "Driver", FakeDriver)
    monkeypatch.setattr(ray, "is_initialized", lambda: up_before)
    monkeypatch.setattr(cluster, "shutdown", lambda: left.append(True))
    monkeypatch.setattr(cli, "_frontier", lambda url, sweep: [])
    res = CliRunner().invoke(cli.app, ["run", str(TINY), "--workdir", str(tmp_path),
                                       "--no-progress"])
    assert res.exit_code == 0, res.output
    assert left == ([] if up_before else [True])


def test_the_exit_checkpoint_creates_no_database_it_never_opened(tmp_path):
    from varbench.orchestrator import store

    store.make_engine(f"sqlite:///{tmp_path / 'never.db'}")  # an engine, no connection yet
    store.checkpoint_wal()
    assert not (tmp_path / "never.db").exists()
