"""A new local MLflow store is a copy of a cached, migrated one (tracking._from_template)."""

import sqlite3

from varbench.orchestrator import tracking
from varbench.orchestrator.tracking import Tracker


def _schema(path) -> list[tuple]:
    with sqlite3.connect(path) as db:
        return sorted(db.execute("SELECT type, name, sql FROM sqlite_master").fetchall())


def _store(path, experiment="e") -> Tracker:
    t = Tracker(f"sqlite:///{path}", experiment, artifact_root=str(path.parent / "art"))
    t.client  # noqa: B018 - creates the store
    return t


def test_second_store_is_a_copy_with_the_same_schema_and_its_own_default(tmp_path, monkeypatch):
    monkeypatch.setenv("VARBENCH_CACHE_DIR", str(tmp_path / "cache"))
    copies = []
    real = tracking._from_template
    monkeypatch.setattr(tracking, "_from_template", lambda p: copies.append(real(p)) or copies[-1])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _store(tmp_path / "a" / "mlflow.db")
    assert copies == [False]  # no template yet: MLflow migrated this one
    template = tracking._template_path()
    assert template.parent == tmp_path / "cache" and template.is_file()
    with sqlite3.connect(template) as db:
        assert db.execute("SELECT COUNT(*) FROM experiments").fetchone()[0] == 0
    second = _store(tmp_path / "b" / "mlflow.db")
    assert copies == [False, True]
    assert _schema(tmp_path / "a" / "mlflow.db") == _schema(tmp_path / "b" / "mlflow.db")
    # the copy works as a store, with its own Default experiment and runs
    names = [e.name for e in second.client.search_experiments()]
    assert names == ["Default"]
    exp = second.experiment_id()
    run = second.client.create_run(exp)
    second.client.log_metric(run.info.run_id, "m", 1.5)
    assert second.client.get_run(run.info.run_id).data.metrics == {"m": 1.5}
    assert first.experiment_id() == exp  # numbered alike in both stores
    assert not list((tmp_path / "b").glob(".*.tmp"))


def test_a_broken_template_is_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("VARBENCH_CACHE_DIR", str(tmp_path / "cache"))
    template = tracking._template_path()
    template.parent.mkdir(parents=True)
    template.write_bytes(b"not a database")
    t = _store(tmp_path / "mlflow.db")
    assert [e.name for e in t.client.search_experiments()] == ["Default"]
    with sqlite3.connect(template) as db:  # replaced by a good one
        assert db.execute("SELECT COUNT(*) FROM alembic_version").fetchone()[0] == 1


def test_cache_off(tmp_path, monkeypatch):
    monkeypatch.setenv("VARBENCH_CACHE_DIR", "off")
    assert tracking._template_path() is None
    _store(tmp_path / "mlflow.db")
    assert not (tmp_path / "off").exists()
