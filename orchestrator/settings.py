"""Where things live: work directory, results database, MLflow tracking URI.

Precedence for each: command-line flag, then environment
(``VARBENCH_HOME``, ``VARBENCH_DB_URL``, ``VARBENCH_TRACKING_URI``), then the
spec's ``storage`` / ``tracking`` fields, then the embedded defaults
(SQLite files in the work directory).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from varbench.workers.errors import UserError


@dataclass(frozen=True)
class Settings:
    workdir: Path
    db_url: str
    tracking_uri: str

    @property
    def artifact_root(self) -> str:
        return str(self.workdir / "mlartifacts")


def resolve_settings(
    workdir: str | None = None,
    db: str | None = None,
    tracking: str | None = None,
    spec_storage: str | None = None,
    spec_tracking: str | None = None,
) -> Settings:
    home = Path(workdir or os.environ.get("VARBENCH_HOME") or "varbench-work").absolute()
    db_url = db or os.environ.get("VARBENCH_DB_URL") or spec_storage or f"sqlite:///{home / 'varbench.db'}"
    tracking_uri = (tracking or os.environ.get("VARBENCH_TRACKING_URI") or spec_tracking
                    or f"sqlite:///{home / 'mlflow.db'}")
    return Settings(home, db_url, tracking_uri)


def check_workdir(path: Path, flag: str = "--workdir") -> None:
    """Refuse, in one line and before anything is written, a directory that cannot
    be one: a file, or under a path that does not exist or is not writable.
    Creates nothing."""
    if path.exists():
        if not path.is_dir():
            raise UserError(flag, f"{path} is a file, not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UserError(flag, f"{path} is not writable")
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(flag, f"cannot create {path}: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(flag, f"cannot create {path}: {parent} is not writable")
