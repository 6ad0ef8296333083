"""MLflow tracking, written through the recorder only (which shapes every payload).

A parent run per study, a child run per trial. A child run is created RUNNING
when its trial is handed to a worker and terminated FINISHED / FAILED / KILLED
when it ends, so durations and live runs are true. Tracking URI ``sqlite:///``
in the work directory by default (MLflow 3 refuses the plain file store), or a
server. Every trial's child run carries ``varbench.trial`` =
"<study>#<number>", so a driver that died finds its runs again instead of
logging them twice.
"""

from __future__ import annotations

import getpass
import math
import os
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from varbench.orchestrator.store import mask_url
from varbench.workers.errors import UserError

PARENT_TAG = "varbench.study"
TRIAL_TAG = "varbench.trial"
BATCH_METRICS = 1000  # MLflow's limit of metrics per log_batch


def now_ms() -> int:
    return int(time.time() * 1000)


def source_tags(commit: str) -> dict[str, str]:
    """The standard ``mlflow.*`` tags the UI shows as Source, User and Version."""
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (some containers)
        user = "unknown"
    return {"mlflow.source.name": "varbench", "mlflow.source.type": "LOCAL",
            "mlflow.source.git.commit": commit, "mlflow.user": user}


def git_commit(cwd: str | Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _local_sqlite(uri: str) -> Path | None:
    """The file behind a ``sqlite:///`` tracking URI (None for servers and the rest)."""
    if not uri.startswith("sqlite:///"):
        return None
    from varbench.orchestrator.store import sqlite_path

    try:
        return sqlite_path(uri)
    except Exception:  # noqa: BLE001 - a malformed URI is refused by check()
        return None


def _template_path() -> Path | None:
    """Where a migrated, empty MLflow SQLite store is cached, per MLflow version.

    MLflow builds a new SQLite store by running every one of its migrations
    (2-2.5 s on a 2-core machine, the largest part of a quick sweep's set-up
    and paid by every test with a fresh work directory); a copy of one it
    built takes milliseconds. ``VARBENCH_CACHE_DIR``, else the XDG cache.
    """
    import mlflow

    root = os.environ.get("VARBENCH_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "varbench")
    if root.lower() in ("", "off", "none"):
        return None
    return Path(root) / f"mlflow-{mlflow.__version__}.db"


def _from_template(path: Path) -> bool:
    """Create the store at ``path`` as a copy of the cached template, if there is a
    valid one. MLflow then adds its Default experiment itself, as for any new store."""
    import shutil
    import sqlite3

    template = _template_path()
    if template is None or not template.is_file():
        return False
    try:
        with sqlite3.connect(f"file:{template}?mode=ro", uri=True) as db:
            head = db.execute("SELECT version_num FROM alembic_version").fetchall()
            empty = db.execute("SELECT COUNT(*) FROM experiments").fetchone()[0] == 0
        db.close()
        if len(head) != 1 or not empty:
            return False
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        shutil.copyfile(template, tmp)
        tmp.replace(path)
        return True
    except (OSError, sqlite3.Error):
        return False


def _save_template(path: Path) -> None:
    """Cache a just-migrated store (its experiments removed: MLflow recreates the
    Default one, with this store's artifact location, in each copy). Best effort:
    a cache that cannot be written only means the next store migrates again."""
    import sqlite3

    template = _template_path()
    if template is None:
        return
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        tmp = template.with_name(f".{template.name}.{os.getpid()}.tmp")
        src, dst = sqlite3.connect(path), sqlite3.connect(tmp)
        try:
            src.backup(dst)  # a consistent snapshot, with MLflow's engine still open
            dst.execute("DELETE FROM experiment_tags")
            dst.execute("DELETE FROM experiments")
            dst.commit()
        finally:
            src.close()
            dst.close()
        tmp.replace(template)
    except (OSError, sqlite3.Error):
        pass


class Tracker:
    def __init__(self, tracking_uri: str, experiment: str, artifact_root: str | None = None):
        self.uri = tracking_uri
        self._client: MlflowClient | None = None
        self.experiment = experiment
        self.artifact_root = artifact_root
        self._exp_id: str | None = None
        self._parents: dict[str, str] = {}

    @property
    def client(self) -> MlflowClient:
        """Made on first use: a local MLflow store is created when its client is, so
        nothing is written before the checks that come first have passed."""
        if self._client is None:
            path = _local_sqlite(self.uri)
            if path is None:
                self._client = MlflowClient(tracking_uri=self.uri)
            else:
                # MLflow creates and migrates a new SQLite store on its first call, and
                # two processes doing so at once collide ("table experiments already
                # exists"): one at a time, under a lock on the directory that holds it.
                from varbench.orchestrator.locks import directory_lock

                path.parent.mkdir(parents=True, exist_ok=True)
                with directory_lock(path.parent):
                    fresh = not path.exists() and not _from_template(path)
                    client = MlflowClient(tracking_uri=self.uri)
                    client.search_experiments(max_results=1)
                    if fresh:  # just migrated: the next new store is a copy of it
                        _save_template(path)
                self._client = client
        return self._client

    def check(self) -> None:
        """Fail fast, naming the (masked) URI, when the tracking store is unreachable.

        A server URI is TCP-probed first: MLflow's own client would retry for
        minutes before giving up.
        """
        parsed = urlparse(self.uri)
        if parsed.scheme in ("http", "https"):
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            try:
                with socket.create_connection((parsed.hostname, port), timeout=3):
                    pass
            except OSError:
                raise UserError(mask_url(self.uri), "cannot reach the MLflow tracking server") from None
        try:
            self.client.search_experiments(max_results=1)  # a read: creates no experiment
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UserError(mask_url(self.uri), f"cannot reach the MLflow tracking store ({first})") from None

    def check_artifacts(self, workdir: Path) -> None:
        """Refuse, before any write, a work directory whose MLflow store keeps its
        artifacts somewhere else: a copied or moved work directory would otherwise
        write into the original (MLflow stores artifact locations as absolute URIs)."""
        if not self.artifact_root or urlparse(self.uri).scheme in ("http", "https"):
            return
        exp = self.client.get_experiment_by_name(self.experiment)  # a read
        if exp is None or not exp.artifact_location.startswith("file:"):
            return
        want = Path(self.artifact_root).resolve()
        have = Path(urlparse(exp.artifact_location).path)
        if have != want:
            raise UserError(str(workdir), f"this work directory's MLflow store keeps the "
                            f"artifacts of {self.experiment!r} in {have}, not in {want}: was it "
                            f"copied or moved? Work in the original, or give the copy a fresh "
                            f"MLflow store with --tracking") from None

    def experiment_id(self) -> str:
        if self._exp_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                loc = None
                if self.artifact_root:
                    Path(self.artifact_root).mkdir(parents=True, exist_ok=True)
                    loc = Path(self.artifact_root).resolve().as_uri()
                self._exp_id = self.client.create_experiment(self.experiment, artifact_location=loc)
            else:
                self._exp_id = exp.experiment_id
        return self._exp_id

    def _find(self, tag: str, value: str) -> str | None:
        runs = self.client.search_runs(
            [self.experiment_id()], filter_string=f"tags.`{tag}` = '{value}'", max_results=1
        )
        return runs[0].info.run_id if runs else None

    def set_experiment_tags(self, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_experiment_tag(self.experiment_id(), k, v)

    def parent_run(self, study: str, tags: dict[str, str], name: str | None = None,
                   params: dict | None = None) -> str:
        """The study's parent run, created once (its params with it: they never change)."""
        if study in self._parents:
            return self._parents[study]
        run_id = self._find(PARENT_TAG, study)
        if run_id is None:
            run = self.client.create_run(
                self.experiment_id(), run_name=name or study, tags={PARENT_TAG: study, **tags}
            )
            run_id = run.info.run_id
            self.log(run_id, params=params or {})
        elif tags:
            self.log(run_id, tags=tags)  # a resumed sweep's commit, note, ...
        self._parents[study] = run_id
        return run_id

    def find_trial_run(self, study: str, number: int) -> str | None:
        return self._find(TRIAL_TAG, f"{study}#{number}")

    def start_child(self, study: str, number: int, name: str, tags: dict[str, str],
                    params: dict, metrics: dict[str, float | None]) -> str:
        """A trial's child run, RUNNING from now on (reused if one exists for it)."""
        found = self.find_trial_run(study, number)
        if found is not None:
            return found
        parent = self.parent_run(study, {})
        run = self.client.create_run(
            self.experiment_id(), start_time=now_ms(), run_name=name,
            tags={"mlflow.parentRunId": parent, TRIAL_TAG: f"{study}#{number}", **tags})
        self.log(run.info.run_id, metrics=[(k, v, 0) for k, v in metrics.items()],
                 params=params)
        return run.info.run_id

    def log(self, run_id: str, metrics: list[tuple[str, float | None, int]] = (),
            params: dict | None = None, tags: dict | None = None) -> None:
        """Metrics as (key, value, step), with params and tags: one log_batch (or as
        few as MLflow's limit allows); non-finite values are left out."""
        ts = now_ms()
        ms = [Metric(k, float(v), ts, int(step)) for k, v, step in metrics
              if v is not None and math.isfinite(float(v))]
        ps = [Param(k, str(v)[:6000]) for k, v in (params or {}).items()]
        ts_ = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        first = True
        while first or ms:
            chunk, ms = ms[:BATCH_METRICS], ms[BATCH_METRICS:]
            if chunk or (first and (ps or ts_)):
                self.client.log_batch(run_id, metrics=chunk, params=ps if first else [],
                                      tags=ts_ if first else [])
            first = False

    def log_dict(self, run_id: str, data: dict | list, path: str) -> None:
        self.client.log_dict(run_id, data, path)

    def log_text(self, run_id: str, text: str, path: str) -> None:
        self.client.log_text(run_id, text, path)

    def end_run(self, run_id: str, status: str) -> None:
        """FINISHED, FAILED or KILLED, ending now."""
        self.client.set_terminated(run_id, status, end_time=now_ms())

    def log_parent_metrics(self, study: str, metrics: dict[str, float], step: int = 0) -> None:
        self.log(self.parent_run(study, {}), metrics=[(k, v, step) for k, v in metrics.items()])

    def finish_parent(self, study: str) -> None:
        self.client.set_terminated(self.parent_run(study, {}), "FINISHED", end_time=now_ms())

    def log_artifact(self, study: str, path: str | Path) -> None:
        self.client.log_artifact(self.parent_run(study, {}), str(path))

    def child_runs(self, study: str, status: str | None = None) -> list:
        parent = self.parent_run(study, {})
        where = f"tags.`mlflow.parentRunId` = '{parent}'"
        if status:
            where += f" and attributes.status = '{status}'"
        return self.client.search_runs([self.experiment_id()], filter_string=where,
                                       max_results=10000)


def ui_command(settings, *, host: str, port: int, workers: int = 1,
               jobs: bool = False) -> tuple[list[str], dict[str, str]]:
    """The ``mlflow server`` command line (and environment) behind ``varbench ui``.

    MLflow 3's defaults start 4 web workers and a job runner with its own
    queue workers (15 processes, about 3 GiB, a minute to answer on 2 cores);
    one uvicorn worker and no job runner answer in seconds. Artifacts are
    served through the server (``mlflow-artifacts:``) from the work directory.
    """
    import os
    import shutil
    import sys

    mlflow_bin = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    argv = [mlflow_bin, "server", "--backend-store-uri", settings.tracking_uri,
            "--default-artifact-root", settings.artifact_root, "--host", host,
            "--port", str(port), "--workers", str(workers)]
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "true" if jobs else "false"}
    return argv, env


def latest_sweep_url(settings, base: str) -> str | None:
    """The UI page of the latest sweep's experiment (MLflow has no start-page option),
    found by reads only; None when there is none yet."""
    from varbench.orchestrator.store import ResultsView, sqlite_path

    for url in (settings.db_url, settings.tracking_uri):
        path = sqlite_path(url) if url.startswith("sqlite") else None
        if path is not None and not path.exists():
            return None
    try:
        view = ResultsView(settings.db_url)
        if not view.has_schema():
            return None
        sweeps = sorted(view.sweeps(), key=lambda r: r.updated_at)
        if not sweeps:
            return None
        name = f"varbench/{sweeps[-1].name}"
        path = sqlite_path(settings.tracking_uri) if settings.tracking_uri.startswith("sqlite") else None
        if path is not None:  # a read-only look: MLflow's own client would take seconds
            import sqlite3

            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
                row = conn.execute("select experiment_id from experiments where name = ?",
                                   (name,)).fetchone()
            exp_id = row[0] if row else None
        else:
            exp = MlflowClient(tracking_uri=settings.tracking_uri).get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp else None
    except Exception:  # noqa: BLE001 - a hint only; the UI starts anyway
        return None
    return f"{base}/#/experiments/{exp_id}" if exp_id is not None else None
