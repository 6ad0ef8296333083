"""MLflow tracking, written through the recorder only.

A parent run per study, a child run per trial (params, metrics, tags for the
sweep, the cell and the git commit). Tracking URI ``sqlite:///`` in the work
directory by default (MLflow 3 refuses the plain file store), or a server.
Every trial's child run carries ``varbench.trial`` = "<study>#<number>", so a
driver that died between logging and recording finds it again instead of
logging it twice.
"""

from __future__ import annotations

import math
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
                    client = MlflowClient(tracking_uri=self.uri)
                    client.search_experiments(max_results=1)
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

    def parent_run(self, study: str, tags: dict[str, str]) -> str:
        """The study's parent run, created once."""
        if study in self._parents:
            return self._parents[study]
        run_id = self._find(PARENT_TAG, study)
        if run_id is None:
            run = self.client.create_run(
                self.experiment_id(), run_name=study, tags={PARENT_TAG: study, **tags}
            )
            run_id = run.info.run_id
        self._parents[study] = run_id
        return run_id

    def log_trial(
        self,
        study: str,
        number: int,
        params: dict,
        metrics: dict[str, float | None],
        tags: dict[str, str],
        failed: bool,
        recovering: bool = False,
    ) -> str:
        """One child run for one trial; with ``recovering``, reuse one already logged."""
        key = f"{study}#{number}"
        if recovering:
            found = self._find(TRIAL_TAG, key)
            if found is not None:
                return found
        parent = self.parent_run(study, {})
        run = self.client.create_run(
            self.experiment_id(),
            run_name=f"trial-{number}",
            tags={"mlflow.parentRunId": parent, TRIAL_TAG: key, **tags},
        )
        ts = int(time.time() * 1000)
        self.client.log_batch(
            run.info.run_id,
            metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()
                     if v is not None and math.isfinite(v)],
            params=[Param(k, str(v)[:6000]) for k, v in params.items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )
        self.client.set_terminated(run.info.run_id, "FAILED" if failed else "FINISHED")
        return run.info.run_id

    def log_parent_metrics(self, study: str, metrics: dict[str, float]) -> None:
        run_id = self.parent_run(study, {})
        ts = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), ts, 0)
                                               for k, v in metrics.items() if math.isfinite(v)])

    def finish_parent(self, study: str) -> None:
        self.client.set_terminated(self.parent_run(study, {}), "FINISHED")

    def log_artifact(self, study: str, path: str | Path) -> None:
        self.client.log_artifact(self.parent_run(study, {}), str(path))

    def child_runs(self, study: str) -> list:
        parent = self.parent_run(study, {})
        return self.client.search_runs(
            [self.experiment_id()], filter_string=f"tags.`mlflow.parentRunId` = '{parent}'",
            max_results=10000,
        )
