"""The results store: SQLAlchemy 2 models, alembic migrations, one writer.

Tables: sweeps, cells, trials, frontier points, convergence checks and their
verdicts, nightly runs. SQLite in the
work directory by default; any SQLAlchemy URL (PostgreSQL) by flag or
``VARBENCH_DB_URL``. Only the driver writes. Every write is one transaction,
so a crash never leaves a half-written row; (cell, trial number) is unique,
so a trial is recorded once however often it is retried.
"""

from __future__ import annotations

import math
import os
import socket
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    delete,
    event,
    select,
    text,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, InterfaceError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from varbench.orchestrator.retry import retry
from varbench.sweeps.frontier import FrontierPoint, TrialPoint
from varbench.sweeps.redact import mask_url  # noqa: F401 - the one masker, re-exported
from varbench.workers.errors import UserError

T = TypeVar("T")

VERSION_TABLE = "varbench_alembic_version"
SCHEMA_LOCK = 7270731  # pg_advisory_lock key for schema set-up
LEASE_LOCK = 7270732  # pg_advisory_xact_lock namespace for sweep leases (keyed by name)


def now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class SweepRow(Base):
    __tablename__ = "vb_sweeps"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    spec_hash: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(20), default="running")
    tags: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class CellRow(Base):
    __tablename__ = "vb_cells"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("vb_sweeps.id", ondelete="CASCADE"))
    study_name: Mapped[str] = mapped_column(String(300), unique=True)
    variant: Mapped[str] = mapped_column(String(100))
    family: Mapped[str] = mapped_column(String(50))
    target: Mapped[str] = mapped_column(String(50))
    lipschitz: Mapped[float] = mapped_column(Float)
    reference: Mapped[dict] = mapped_column(JSON, default=dict)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # the training recipe every result of the cell is conditional on (steps, batch, lr,
    # schedule); None for cells recorded before migration 0003
    budget: Mapped[dict | None] = mapped_column(JSON, nullable=True)


class TrialRow(Base):
    __tablename__ = "vb_trials"
    __table_args__ = (UniqueConstraint("cell_id", "number", name="uq_trial_cell_number"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cell_id: Mapped[int] = mapped_column(ForeignKey("vb_cells.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text, default="")
    config: Mapped[dict] = mapped_column(JSON)
    n_params: Mapped[int] = mapped_column(BigInteger, default=0)
    flops: Mapped[int] = mapped_column(BigInteger, default=0)
    width: Mapped[int] = mapped_column(Integer, default=0)
    err: Mapped[float | None] = mapped_column(Float, nullable=True)
    err_ucb: Mapped[float | None] = mapped_column(Float, nullable=True)
    rel_err: Mapped[float | None] = mapped_column(Float, nullable=True)
    steps_run: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    result: Mapped[dict] = mapped_column(JSON)
    mlflow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


def trial_point(t: TrialRow) -> TrialPoint:
    """The frontier's view of a stored trial, with its seed replicas' errors."""
    reps = tuple(e for e in (t.result or {}).get("replica_err_ucb") or () if e is not None)
    return TrialPoint(t.number, t.n_params, t.err_ucb, t.status, reps)


class FrontierRow(Base):
    __tablename__ = "vb_frontier"
    __table_args__ = (UniqueConstraint("cell_id", "eps", name="uq_frontier_cell_eps"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cell_id: Mapped[int] = mapped_column(ForeignKey("vb_cells.id", ondelete="CASCADE"), index=True)
    eps: Mapped[float] = mapped_column(Float)
    reached: Mapped[bool] = mapped_column(Boolean)
    n_star: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    trial_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    best_err: Mapped[float | None] = mapped_column(Float, nullable=True)
    max_n_tried: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    n_trials: Mapped[int] = mapped_column(Integer, default=0)


class CheckRow(Base):
    """A convergence-check trial (``sweeps.convergence``): apart from the trials, so it
    never counts toward a frontier. One per (cell, kind, source trial, factor)."""

    __tablename__ = "vb_checks"
    __table_args__ = (UniqueConstraint("cell_id", "kind", "trial_number", "factor",
                                       name="uq_check"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cell_id: Mapped[int] = mapped_column(ForeignKey("vb_cells.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # "failing" (afresh) or "reaching" (continued)
    trial_number: Mapped[int] = mapped_column(Integer)  # the trial it checks
    factor: Mapped[int] = mapped_column(Integer)
    steps: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(20))  # completed, failed, skipped
    reason: Mapped[str] = mapped_column(Text, default="")
    err: Mapped[float | None] = mapped_column(Float, nullable=True)
    err_ucb: Mapped[float | None] = mapped_column(Float, nullable=True)
    result: Mapped[dict] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class VerdictRow(Base):
    """A frontier point's convergence verdict, for the N* trial it was judged on."""

    __tablename__ = "vb_verdicts"
    __table_args__ = (UniqueConstraint("cell_id", "eps", name="uq_verdict_cell_eps"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    cell_id: Mapped[int] = mapped_column(ForeignKey("vb_cells.id", ondelete="CASCADE"), index=True)
    eps: Mapped[float] = mapped_column(Float)
    verdict: Mapped[str] = mapped_column(String(20))
    trial_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    n_star: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    detail: Mapped[dict] = mapped_column(JSON)


class LeaseRow(Base):
    """Who runs a sweep now: one row per sweep while a driver holds it."""

    __tablename__ = "vb_leases"
    sweep: Mapped[str] = mapped_column(String(100), primary_key=True)
    owner: Mapped[str] = mapped_column(String(200))
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    acquired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class Holder:
    """A lease as read: enough to name the driver that holds it."""

    owner: str
    host: str
    pid: int
    heartbeat_at: datetime
    expires_at: datetime

    def describe(self, at: datetime | None = None) -> str:
        at = at or now()
        beat = max(0.0, (at - self.heartbeat_at).total_seconds())
        left = (self.expires_at - at).total_seconds()
        return (f"driver pid {self.pid} on {self.host} (heartbeat {beat:.0f} s ago, "
                f"lease expires in {max(0.0, left):.0f} s)")


def _aware(t: datetime) -> datetime:
    """SQLite returns naive datetimes; every lease time is UTC."""
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _holder(row: LeaseRow) -> Holder:
    return Holder(row.owner, row.host, row.pid, _aware(row.heartbeat_at), _aware(row.expires_at))


def _pid_gone(host: str, pid: int) -> bool:
    """A holder on this host whose process no longer exists (a SIGKILLed driver):
    its lease is dead without waiting for the expiry."""
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class NightlyRow(Base):
    __tablename__ = "vb_nightly_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(ForeignKey("vb_sweeps.id", ondelete="CASCADE"))
    date: Mapped[str] = mapped_column(String(10))
    commit: Mapped[str] = mapped_column(String(40))
    regression: Mapped[bool] = mapped_column(Boolean, default=False)
    comparison: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


def _migrations_dir() -> str:
    return str(Path(__file__).parent / "migrations")


def migrate(engine: Engine) -> None:
    """Bring the schema to head with alembic (own version table, beside Optuna's)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", _migrations_dir())
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


# SQLite files a writer engine of this process opened in WAL mode: ``checkpoint_wal``
_WAL_FILES: set[str] = set()


def checkpoint_wal() -> None:
    """Copy what the WAL of every SQLite file this process wrote holds back into the
    file itself (``PRAGMA wal_checkpoint(TRUNCATE)``). SQLite does so by itself when
    a file's last connection closes; the console script exits with its engines still
    open (``cli._exit_quickly``), which would leave a run's rows in ``varbench.db-wal``
    beside a stale ``varbench.db``: safe for the next open, not for a copy of the
    file alone. A file that cannot be checkpointed now is left as it is."""
    for path in sorted(_WAL_FILES):
        if not os.path.exists(path):  # never connected: connecting would create it
            continue
        try:
            con = sqlite3.connect(path, timeout=5)
            try:
                con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                con.close()
        except sqlite3.Error:
            pass


def make_engine(url: str, writer: bool = True) -> Engine:
    """An engine for ``url``; a reader's leaves a SQLite file's journal mode alone
    (the writer sets WAL once, and that persists), so reading writes nothing."""
    kwargs: dict = {"pool_pre_ping": True, "future": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30}
    try:
        engine = create_engine(url, **kwargs)
    except (ArgumentError, ImportError, ValueError) as exc:  # ValueError: a port not a number
        raise UserError(mask_url(url), f"not a usable database URL ({exc})") from None
    if url.startswith("sqlite"):
        path = sqlite_path(url)
        if writer and path is not None:
            _WAL_FILES.add(str(path))

        @event.listens_for(engine, "connect")
        def _fk(dbapi_conn, _):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            if writer:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

    return engine


def sqlite_path(url: str) -> Path | None:
    """The file behind a SQLite URL (None for other databases and in-memory ones)."""
    u = make_url(url)
    if u.drivername.startswith("sqlite") and u.database and u.database != ":memory:":
        return Path(u.database)
    return None


def ensure_sqlite_dir(url: str) -> None:
    path = sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)


class ResultsView:
    """Reads of varbench's own tables, and nothing else: what read-only commands get.

    Reads are retried like writes when the connection drops.
    """

    writer = False

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url, writer=self.writer)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def check(self) -> None:
        """Fail fast, naming the (masked) address, when the database is unreachable.

        A SQLite file that does not exist is refused, not created: a read
        needs a store that a sweep has written.
        """
        path = sqlite_path(self.url)
        if path is not None and type(self) is ResultsView and not path.exists():
            raise UserError(str(path), "no results store here yet; run a sweep first, "
                            "or point --workdir / --db at one")

        def ping() -> None:
            with self.engine.connect() as conn:
                conn.exec_driver_sql("SELECT 1")

        try:
            retry(ping, attempts=3)  # a dropped connection is not an unreachable server
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(mask_url(self.url), f"cannot reach the results database ({first})") from None
        if type(self) is ResultsView:  # a reader needs varbench's tables, and never makes them
            self.check_schema()

    def has_schema(self) -> bool:
        """Whether varbench's tables exist here (read-only commands never create them)."""
        from sqlalchemy import inspect

        return retry(lambda: inspect(self.engine).has_table(SweepRow.__tablename__))

    def check_schema(self) -> None:
        """A read needs varbench's tables at this version's head; otherwise one line
        says so (a read never migrates: the next ``varbench run`` does)."""
        from alembic.runtime.migration import MigrationContext
        from alembic.script import ScriptDirectory

        where = mask_url(self.url)
        try:
            ok = self.has_schema()
        except Exception as exc:  # noqa: BLE001 - e.g. a malformed SQLite file
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UserError(where, f"cannot read the results database ({first})") from None
        if not ok:
            raise UserError(where, "no varbench results in this database yet; "
                            "run a sweep first, or point --workdir / --db at one")

        def current() -> str | None:
            with self.engine.connect() as conn:
                return MigrationContext.configure(
                    conn, opts={"version_table": VERSION_TABLE}).get_current_revision()

        head = ScriptDirectory(_migrations_dir()).get_current_head()
        have = retry(current)
        if have != head:
            raise UserError(where, f"the results store needs a migration (schema {have}, this "
                            f"varbench expects {head}); the next 'varbench run' on it migrates it")

    def _run(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one transaction; rerun it whole when the connection drops.

        A dropped connection (server restart, pg_terminate_backend, failover)
        rolls the transaction back, so a rerun never writes anything twice.
        """
        def once() -> T:
            with self._session() as session, session.begin():
                return work(session)

        return retry(once)

    def sweep(self, name: str) -> SweepRow | None:
        return self._run(lambda s: s.scalar(select(SweepRow).where(SweepRow.name == name)))

    def sweeps(self) -> list[SweepRow]:
        return self._run(lambda s: list(s.scalars(select(SweepRow).order_by(SweepRow.id))))

    def cells(self, sweep_id: int) -> list[CellRow]:
        return self._run(lambda s: list(s.scalars(
            select(CellRow).where(CellRow.sweep_id == sweep_id).order_by(CellRow.id))))

    def trials(self, cell_id: int) -> list[TrialRow]:
        return self._run(lambda s: list(s.scalars(
            select(TrialRow).where(TrialRow.cell_id == cell_id).order_by(TrialRow.number))))

    def trial_points(self, cell_id: int) -> list[TrialPoint]:
        return [trial_point(t) for t in self.trials(cell_id)]

    def frontier(self, cell_id: int) -> list[FrontierRow]:
        return self._run(lambda s: list(s.scalars(
            select(FrontierRow).where(FrontierRow.cell_id == cell_id)
            .order_by(FrontierRow.eps.desc()))))

    def checks(self, cell_id: int) -> list[CheckRow]:
        return self._run(lambda s: list(s.scalars(
            select(CheckRow).where(CheckRow.cell_id == cell_id).order_by(CheckRow.id))))

    def verdicts(self, cell_id: int) -> list[VerdictRow]:
        return self._run(lambda s: list(s.scalars(
            select(VerdictRow).where(VerdictRow.cell_id == cell_id)
            .order_by(VerdictRow.eps.desc()))))

    def lease(self, sweep: str) -> Holder | None:
        """Who holds the sweep's lease, if anyone (expired or not)."""
        row = self._run(lambda s: s.get(LeaseRow, sweep))
        return None if row is None else _holder(row)

    def nightly_runs(self, sweep_id: int | None = None) -> list[NightlyRow]:
        q = select(NightlyRow).order_by(NightlyRow.id)
        if sweep_id is not None:
            q = q.where(NightlyRow.sweep_id == sweep_id)
        return self._run(lambda s: list(s.scalars(q)))


class ResultsStore(ResultsView):
    """The writer: schema set-up and every write. Only the recorder holds one."""

    writer = True

    def __init__(self, url: str):
        super().__init__(url)  # refuses a malformed URL; creates nothing yet

    def check(self) -> None:
        """As the view's, but a missing SQLite file is created (with its directory)."""
        ensure_sqlite_dir(self.url)
        super().check()

    def migrate(self) -> None:
        ensure_sqlite_dir(self.url)
        retry(lambda: migrate(self.engine))

    @contextmanager
    def schema_lock(self) -> Iterator[None]:
        """Serialise schema set-up across drivers (a PostgreSQL advisory lock).

        Two sweeps starting at once on an empty database would otherwise both
        create the same tables. On SQLite a lock on its directory does
        the same (its DDL is not transactional across Optuna's and ours). A
        connection or process that dies while holding the lock releases it.
        """
        path = sqlite_path(self.url)
        if path is not None:
            from varbench.orchestrator.locks import directory_lock

            ensure_sqlite_dir(self.url)
            with directory_lock(path.parent):
                yield
            return
        if self.engine.dialect.name != "postgresql":
            yield
            return

        def acquire():
            conn = self.engine.connect()
            try:
                conn.exec_driver_sql(f"SELECT pg_advisory_lock({SCHEMA_LOCK})")
            except BaseException:
                conn.invalidate()
                conn.close()
                raise
            return conn

        conn = retry(acquire)
        try:
            yield
        finally:
            try:
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({SCHEMA_LOCK})")
                conn.commit()
            except (OperationalError, InterfaceError):
                pass  # the server already dropped the connection, and the lock with it
            conn.close()

    # --- the sweep lease: one driver per sweep ------------------------------------

    def _lease_engine(self) -> Engine:
        """SQLite: a second engine whose transactions start with BEGIN IMMEDIATE, so the
        read-decide-write of a lease holds the database's write lock throughout
        (SQLAlchemy's recipe for pysqlite). PostgreSQL: the main engine, with a
        transaction-scoped advisory lock per sweep taken in ``_locked``."""
        if self.engine.dialect.name != "sqlite":
            return self.engine
        if getattr(self, "_lease_eng", None) is None:
            eng = create_engine(self.url, connect_args={"timeout": 30}, future=True)

            @event.listens_for(eng, "connect")
            def _autocommit(dbapi_conn, _):  # pragma: no cover - trivial
                dbapi_conn.isolation_level = None  # we issue BEGIN ourselves

            @event.listens_for(eng, "begin")
            def _immediate(conn):  # pragma: no cover - trivial
                conn.exec_driver_sql("BEGIN IMMEDIATE")

            self._lease_eng = eng
        return self._lease_eng

    def _locked(self, sweep: str, work: Callable[[Session], T]) -> T:
        """``work`` in one transaction that no other driver's lease call can interleave."""
        engine = self._lease_engine()

        def once() -> T:
            with Session(engine, expire_on_commit=False) as s, s.begin():
                if engine.dialect.name == "postgresql":
                    s.execute(text("SELECT pg_advisory_xact_lock(:ns, hashtext(:k))"),
                              {"ns": LEASE_LOCK, "k": sweep})
                return work(s)

        return retry(once)

    def take_lease(self, sweep: str, owner: str, ttl_s: float) -> Holder | None:
        """Take (or renew) the sweep's lease for ``owner``, atomically.

        Returns None when ``owner`` now holds it, or the live holder when
        another driver does. A lease is free when it is absent, expired, or
        held by a process on this host that no longer exists.
        """
        def work(s: Session) -> Holder | None:
            t = now()
            row = s.get(LeaseRow, sweep)
            if row is not None and row.owner != owner:
                held = _holder(row)
                if held.expires_at > t and not _pid_gone(held.host, held.pid):
                    return held
                s.delete(row)
                s.flush()
                row = None
            if row is None:
                s.add(LeaseRow(sweep=sweep, owner=owner, host=socket.gethostname(),
                               pid=os.getpid(), acquired_at=t, heartbeat_at=t,
                               expires_at=t + timedelta(seconds=ttl_s)))
            else:
                row.heartbeat_at, row.expires_at = t, t + timedelta(seconds=ttl_s)
            return None
        return self._locked(sweep, work)

    def renew_lease(self, sweep: str, owner: str, ttl_s: float) -> bool:
        """The heartbeat: extend our lease; False when it is no longer ours (it
        expired and another driver took it)."""
        def work(s: Session) -> bool:
            row = s.get(LeaseRow, sweep)
            if row is None or row.owner != owner:
                return False
            t = now()
            row.heartbeat_at, row.expires_at = t, t + timedelta(seconds=ttl_s)
            return True
        return self._locked(sweep, work)

    def release_lease(self, sweep: str, owner: str) -> None:
        def work(s: Session) -> None:
            row = s.get(LeaseRow, sweep)
            if row is not None and row.owner == owner:
                s.delete(row)
        self._locked(sweep, work)

    def upsert_sweep(self, name: str, spec: dict, spec_hash: str, tags: dict | None = None) -> int:
        def work(s: Session):
            row = s.scalar(select(SweepRow).where(SweepRow.name == name))
            if row is None:
                row = SweepRow(name=name, spec=spec, spec_hash=spec_hash, tags=tags or {})
                s.add(row)
                s.flush()
            elif row.spec_hash != spec_hash:
                raise UserError(
                    "name", f"sweep {name!r} already exists with a different spec; "
                    "give the changed spec a new name"
                )
            else:
                row.status, row.updated_at = "running", now()
                if tags:
                    row.tags = {**(row.tags or {}), **tags}
            return row.id
        return self._run(work)

    def set_sweep_status(self, sweep_id: int, status: str) -> None:
        def work(s: Session):
            row = s.get(SweepRow, sweep_id)
            row.status, row.updated_at = status, now()
        return self._run(work)

    def upsert_cell(self, sweep_id: int, study_name: str, variant: str, family: str,
                    target: str, lipschitz: float, budget: dict | None = None) -> int:
        def work(s: Session):
            row = s.scalar(select(CellRow).where(CellRow.study_name == study_name))
            if row is None:
                row = CellRow(sweep_id=sweep_id, study_name=study_name, variant=variant,
                              family=family, target=target, lipschitz=lipschitz, reference={},
                              budget=budget)
                s.add(row)
                s.flush()
            elif budget is not None and row.budget is None:  # a cell from before 0003
                row.budget = budget
            return row.id
        return self._run(work)

    def set_cell_fields(self, cell_id: int, **fields) -> None:
        def work(s: Session):
            row = s.get(CellRow, cell_id)
            for k, v in fields.items():
                setattr(row, k, v)
        return self._run(work)

    def record_trial(self, cell_id: int, number: int, result: dict,
                     also: list[tuple[int, dict]] = ()) -> bool:
        """Insert a trial's result once; False (and no write) if it is already there.

        ``also``: (cell, result) rows of the same trial number in other cells (a
        FlowAR trial scored at its other inference settings, ``sweeps.inference``),
        each inserted in the same transaction unless already there.
        """
        def work(s: Session):
            new = _insert_trial(s, cell_id, number, result)
            for other, res in also:
                _insert_trial(s, other, number, res)
            return new
        return self._run(work)

    def fill_trials(self, rows: list[tuple[int, int, dict, str | None]]) -> int:
        """Insert (cell, number, result, MLflow run id) rows not there yet, in one
        transaction; how many were new (a resume deriving missing setting rows)."""
        def work(s: Session):
            return sum(_insert_trial(s, c, n, res, run_id) for c, n, res, run_id in rows)
        return self._run(work)

    def record_check(self, cell_id: int, kind: str, number: int, factor: int,
                     result: dict) -> bool:
        """A check trial's result, once; False (and no write) if it is already there."""
        def work(s: Session):
            exists = s.scalar(select(CheckRow.id).where(
                CheckRow.cell_id == cell_id, CheckRow.kind == kind,
                CheckRow.trial_number == number, CheckRow.factor == factor))
            if exists is not None:
                return False
            s.add(CheckRow(
                cell_id=cell_id, kind=kind, trial_number=number, factor=factor,
                steps=int((result.get("config") or {}).get("steps", 0)),
                status=result["status"], reason=result.get("reason", ""),
                err=result.get("err"), err_ucb=result.get("err_ucb"), result=_json_safe(result)))
            return True
        return self._run(work)

    def replace_verdicts(self, cell_id: int, verdicts: list[dict]) -> None:
        """The cell's verdicts, one per ε (dicts with eps, verdict, trial, n_star, ...)."""
        def work(s: Session):
            s.execute(delete(VerdictRow).where(VerdictRow.cell_id == cell_id))
            for v in verdicts:
                s.add(VerdictRow(cell_id=cell_id, eps=v["eps"], verdict=v["verdict"],
                                 trial_number=v.get("trial"), n_star=v.get("n_star"),
                                 detail=_json_safe(v)))
        return self._run(work)

    def set_trial_run_id(self, cell_id: int, number: int, run_id: str,
                         also: list[int] = ()) -> None:
        """The trial's MLflow run id on its row and, for ``also``'s cells, on the row
        of the same number where there is one (the same training, another setting)."""
        def work(s: Session):
            for c in (cell_id, *also):
                row = s.scalar(select(TrialRow).where(
                    TrialRow.cell_id == c, TrialRow.number == number))
                if row is not None:
                    row.mlflow_run_id = run_id
        return self._run(work)

    def replace_frontier(self, cell_id: int, points: list[FrontierPoint]) -> None:
        def work(s: Session):
            s.execute(delete(FrontierRow).where(FrontierRow.cell_id == cell_id))
            for p in points:
                s.add(FrontierRow(cell_id=cell_id, **p.to_dict()))
        return self._run(work)

    def add_nightly(self, sweep_id: int, date: str, commit: str, regression: bool,
                    comparison: dict) -> None:
        """One nightly row per sweep: a rerun of the same night replaces its comparison."""
        def work(s: Session):
            row = s.scalar(select(NightlyRow).where(NightlyRow.sweep_id == sweep_id))
            if row is None:
                row = NightlyRow(sweep_id=sweep_id, date=date, commit=commit)
                s.add(row)
            row.regression, row.comparison = regression, _json_safe(comparison)
        return self._run(work)



def _insert_trial(s: Session, cell_id: int, number: int, result: dict,
                  run_id: str | None = None) -> bool:
    """One trial row unless (cell, number) is there already; whether it was new."""
    exists = s.scalar(select(TrialRow.id).where(
        TrialRow.cell_id == cell_id, TrialRow.number == number))
    if exists is not None:
        return False
    s.add(TrialRow(
        cell_id=cell_id, number=number, status=result["status"],
        reason=result.get("reason", ""), config=_json_safe(result.get("config", {})),
        n_params=result.get("n_params", 0), flops=result.get("flops", 0),
        width=result.get("width", 0), err=result.get("err"),
        err_ucb=result.get("err_ucb"), rel_err=result.get("rel_err"),
        steps_run=result.get("steps_run", 0), seconds=result.get("seconds", 0.0),
        result=_json_safe(result), mlflow_run_id=run_id,
    ))
    s.flush()
    return True


def _json_safe(value):
    """JSON columns reject inf/nan on PostgreSQL: store those floats as strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value
