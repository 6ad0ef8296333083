"""Issue 15 items 4, 5, 7, 8: every bad input is one line, exit 2, nothing written.

Each row is an input that once gave a traceback, hung, or wrote a file before
its check failed. Run in-process (CliRunner): every one is refused before Ray
starts. After each, the work directory holds nothing new.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import TINY, assert_user_error, free_port
from varbench.orchestrator.cli import app


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _truncated_db(path: Path) -> None:
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.executemany("INSERT INTO t VALUES (?)", [("x" * 1000,)] * 200)
        conn.commit()
    with path.open("r+b") as f:
        f.truncate(20000)


CASES = [  # (id, args with {w} = work dir, {f} = a file, {p} = a free port, fragments)
    ("status --db notaurl", ["status", "--db", "notaurl"], ["not a usable database URL"]),
    ("run --db notaurl", ["run", "{spec}", "--workdir", "{w}", "--db", "notaurl"],
     ["not a usable database URL"]),
    ("status --db port not a number", ["status", "--db", "postgresql://u@127.0.0.1:notaport/x"],
     ["not a usable database URL"]),
    ("run --db port not a number", ["run", "{spec}", "--workdir", "{w}", "--db",
                                    "postgresql://u:pw@127.0.0.1:notaport/x"],
     ["not a usable database URL", "u:***@"]),
    ("run --workdir a file", ["run", "{spec}", "--workdir", "{f}"], ["--workdir", "is a file"]),
    ("run --workdir under /proc", ["run", "{spec}", "--workdir", "/proc/1/nope"],
     ["--workdir", "cannot create"]),
    ("run --tracking notaurl", ["run", "{spec}", "--workdir", "{w}", "--tracking", "notaurl"],
     ["cannot reach the MLflow tracking store"]),
    ("run --tracking unreachable server", ["run", "{spec}", "--workdir", "{w}", "--tracking",
                                           "http://127.0.0.1:{p}"],
     ["cannot reach the MLflow tracking server"]),
    ("run --db sqlite under a file", ["run", "{spec}", "--workdir", "{w}", "--db",
                                      "sqlite:///{f}/x.db"], ["--db", "is a file"]),
    ("run --db unreachable", ["run", "{spec}", "--workdir", "{w}", "--db",
                              "postgresql://u:pw@127.0.0.1:{p}/x"],
     ["cannot reach the results database"]),
    ("run, truncated mlflow.db", ["run", "{spec}", "--workdir", "{trunc}"],
     ["malformed"]),
    ("report, truncated mlflow.db", ["report", "tiny", "--workdir", "{trunc}"],
     ["no results store here yet"]),
    ("frontier on an empty work dir", ["frontier", "nosuchsweep", "--workdir", "{w}"],
     ["no results store here yet"]),
    ("report on an empty work dir", ["report", "nosuchsweep", "--workdir", "{w}"],
     ["no results store here yet"]),
    ("status on an empty work dir", ["status", "--workdir", "{w}"], ["no results store here yet"]),
    ("frontier on a SQLite file without our tables", ["frontier", "x", "--db", "sqlite:///{f}"],
     ["no varbench results in this database"]),
    ("trial --width 10^7", ["trial", "--width", "10000000"], ["--width"]),
    ("trial --s-last 10^5", ["trial", "--s-last", "100000"], ["--s-last"]),
    ("trial --batch-size 10^9", ["trial", "--batch-size", "1000000000"], ["--batch-size"]),
    ("trial --replicas 10^5", ["trial", "--replicas", "100000"], ["--replicas"]),
    ("trial --n-eval 10^9", ["trial", "--n-eval", "1000000000"], ["--n-eval"]),
    ("trial --set width=10^7", ["trial", "--set", "width=10000000"], ["--width"]),
    ("run duplicate keys", ["run", "{dup}", "--workdir", "{w}"], ["duplicate key 'trials'"]),
    ("run !!python tag", ["run", "{tag}", "--workdir", "{w}"],
     ["!!python/object/apply:os.system", "not allowed"]),
    ("run /dev/zero", ["run", "/dev/zero", "--workdir", "{w}"], ["larger than 1024 KiB"]),
    ("run 101 ε values", ["run", "{eps}", "--workdir", "{w}"], ["eps", "at most 100"]),
]


@pytest.mark.parametrize("args,fragments", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_nothing_written(tmp_path, args, fragments):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    trunc = tmp_path / "trunc"
    trunc.mkdir()
    _truncated_db(trunc / "mlflow.db")
    (tmp_path / "dup.yaml").write_text(TINY.read_text() + "trials: 5\n")
    (tmp_path / "tag.yaml").write_text('name: !!python/object/apply:os.system ["true"]\n')
    text = TINY.read_text().replace("eps: [0.2, 0.1, 0.07]",
                                    "eps: [" + ", ".join(f"{0.5 / (i + 1):.6f}" for i in range(101)) + "]")
    (tmp_path / "eps.yaml").write_text(text)
    names = {"spec": str(TINY), "w": str(tmp_path / "work"), "f": str(a_file), "p": str(free_port()),
             "trunc": str(trunc), "dup": str(tmp_path / "dup.yaml"),
             "tag": str(tmp_path / "tag.yaml"), "eps": str(tmp_path / "eps.yaml")}
    before = _snapshot(tmp_path)
    res = CliRunner().invoke(app, [a.format(**names) for a in args])
    assert_user_error(res, *fragments)
    assert _snapshot(tmp_path) == before  # nothing written: no work dir, no store, no lock


def test_trial_on_cuda_without_a_gpu_is_one_line():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    res = CliRunner().invoke(app, ["trial", "--device", "cuda"])
    assert_user_error(res, "--device", "no CUDA device")


def test_doctor_reports_a_truncated_mlflow_db_and_writes_nothing(tmp_path):
    _truncated_db(tmp_path / "mlflow.db")
    before = _snapshot(tmp_path)
    res = CliRunner().invoke(app, ["doctor", "--workdir", str(tmp_path)])
    assert res.exit_code == 1, res.output  # a failed check, reported in the table
    assert "Traceback" not in res.output and "malformed" in res.output
    assert _snapshot(tmp_path) == before


def test_doctor_on_a_fresh_work_dir_creates_nothing(tmp_path):
    res = CliRunner().invoke(app, ["doctor", "--workdir", str(tmp_path / "work")])
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("resources,needle", [({"cpus": 100}, "100 CPU"),
                                              ({"gpus": 1}, "1 GPU")])
def test_resources_no_node_can_meet_are_refused_before_the_first_trial(tmp_path, ray_local,
                                                                       resources, needle):
    """Issue 15 item 6: accepted, then nothing scheduled, trials left RUNNING."""
    from tests.conftest import tiny_spec
    from varbench.orchestrator.driver import run_sweep
    from varbench.orchestrator.settings import resolve_settings
    from varbench.sweeps.spec import load_spec
    from varbench.workers.errors import UserError

    spec = load_spec(tiny_spec(tmp_path, resources=resources))
    t0 = __import__("time").perf_counter()
    with pytest.raises(UserError, match=needle) as exc:
        run_sweep(spec, resolve_settings(workdir=str(tmp_path / "work")))
    assert "largest node has 2 CPU and 0 GPU" in str(exc.value)
    assert "\n" not in str(exc.value)
    assert __import__("time").perf_counter() - t0 < 60
    assert not (tmp_path / "work").exists()  # refused before any store was created


def test_a_head_advertising_an_unreachable_address_is_one_line_not_a_hang(monkeypatch):
    """Issue 15 item 9: the TCP probe of --address passed, then ray.init went to the
    node's advertised 192.0.2.2 and hung for minutes."""
    import socket
    import time

    from varbench.orchestrator import cluster
    from varbench.workers.errors import UserError

    with socket.socket() as gcs:  # something answers on the address given
        gcs.bind(("127.0.0.1", 0))
        gcs.listen()
        address = f"127.0.0.1:{gcs.getsockname()[1]}"
        monkeypatch.setattr(cluster, "_node_addresses",
                            lambda addr, timeout_s: [("192.0.2.2", 40123)])
        t0 = time.perf_counter()
        with pytest.raises(UserError, match="advertises its nodes at 192.0.2.2:40123") as exc:
            cluster.check_advertised(address)
        assert time.perf_counter() - t0 < 10 and "\n" not in str(exc.value)


def test_the_advertised_address_check_passes_on_a_real_cluster(ray_local):
    from varbench.orchestrator import cluster

    node = ray_local._private.worker.global_worker.node
    assert cluster._node_addresses(node.gcs_address, 10)  # the real GCS call works
    cluster.check_advertised(node.gcs_address)
