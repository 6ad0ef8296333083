"""The sweep driver: the one writer.

One driver per sweep (local, or inside a Ray job). It asks Optuna for trials,
runs them as Ray tasks with resource requests and retries, collects results as
they finish and, for each, in this order: records it in the results store
(once: unique per cell and trial number), tells Optuna, hands the freed
worker its next trial, then logs the MLflow child run and refreshes the
cell's frontier. Workers only compute.

Resume: running the same sweep again continues it. Optuna trials left RUNNING
by a dead driver are completed from the store when their result was recorded,
or failed and their params re-queued when it was not; store rows without an
MLflow run get theirs (found again by tag, or logged).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import optuna
import ray
from optuna.exceptions import StorageInternalError
from optuna.trial import TrialState
from sqlalchemy.exc import InterfaceError, OperationalError

from varbench.orchestrator import cluster
from varbench.orchestrator.settings import Settings
from varbench.orchestrator.store import ResultsStore, mask_url
from varbench.orchestrator.tracking import Tracker, git_commit
from varbench.sweeps.frontier import FrontierPoint, frontier
from varbench.sweeps.samplers import make_sampler
from varbench.sweeps.space import search_space, trial_config, trial_seed
from varbench.sweeps.spec import ModelVariant, SweepSpec
from varbench.workers.config import TrialConfig
from varbench.workers.population import batched, shape_key
from varbench.workers.remote import FAULT_VARS, population_task, reference_task, trial_task

log = logging.getLogger("varbench.driver")
T = TypeVar("T")
DIRECTIONS = ["minimize", "minimize"]  # (N, err_ucb)
PACK_MAX = 4  # trials of one small shape trained together in one worker call


@dataclass
class Cell:
    cell_id: int
    study_name: str
    variant: ModelVariant
    target: str
    lipschitz: float
    study: optuna.Study
    space: dict = field(default_factory=dict)
    done: int = 0
    in_flight: int = 0
    points: list[FrontierPoint] = field(default_factory=list)


@dataclass
class Progress:
    done: int
    total: int
    frontier_text: str


@dataclass
class SweepOutcome:
    sweep: str
    trials_run: int
    trials_recorded: int
    seconds: float
    compute_seconds: float
    frontier: dict[str, list[FrontierPoint]]
    interrupted: bool = False


def retry_db(fn: Callable[[], T], attempts: int = 6) -> T:
    """Run an Optuna storage call again when the database connection drops.

    Tells use ``skip_if_finished`` and enqueues ``skip_if_exists``, so a call
    that committed before its connection died is harmless to repeat.
    """
    for i in range(attempts):
        try:
            return fn()
        except (OperationalError, InterfaceError, StorageInternalError):
            if i == attempts - 1:
                raise
            time.sleep(0.2 * 2**i)
    raise AssertionError("unreachable")


def study_name(spec: SweepSpec, variant: ModelVariant, target: str, lipschitz: float) -> str:
    return f"{spec.name}:{variant.label}:{target}:L={lipschitz:g}"


def optuna_storage(url: str) -> optuna.storages.RDBStorage:
    kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


class Driver:
    def __init__(
        self,
        spec: SweepSpec,
        settings: Settings,
        address: str | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        tags: dict[str, str] | None = None,
    ):
        self.spec = spec
        self.settings = settings
        self.address = address
        self.on_progress = on_progress or (lambda p: None)
        self.tags = tags or {}
        self.store = ResultsStore(settings.db_url)
        self.tracker = Tracker(settings.tracking_uri, f"varbench/{spec.name}",
                               artifact_root=settings.artifact_root)
        self.commit = git_commit()
        self.cells: list[Cell] = []
        # a task carries one trial, or several of one shape trained together
        self._inflight: dict[ray.ObjectRef, list[tuple[Cell, optuna.Trial, dict]]] = {}
        self._pending: list[tuple[Cell, optuna.Trial, dict]] = []  # asked, not yet sent
        self._outgoing: list[tuple[Cell, optuna.Trial, TrialConfig]] = []  # being sent
        self._stop = False  # set by Ctrl-C

    # --- set-up ----------------------------------------------------------------

    def preflight(self) -> None:
        """Check every address before anything is written: Ray, the database, MLflow."""
        if self.address not in (None, "", "local", "auto"):
            cluster.check_address(self.address)
        self.store.check()
        self.tracker.check()
        cluster.connect(self.address)

    def prepare(self) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with self.store.schema_lock():  # concurrent drivers on one PostgreSQL: one at a time
            self.store.migrate()
            storage = retry_db(lambda: optuna_storage(self.settings.db_url))
        spec = self.spec
        self.sweep_id = self.store.upsert_sweep(
            spec.name, spec.model_dump(mode="json"), spec.spec_hash(),
            {"commit": self.commit, **self.tags},
        )
        for variant, target, lip in spec.cell_keys():
            name = study_name(spec, variant, target, lip)
            space = search_space(spec, variant)
            sampler = make_sampler(spec.sampler, spec.eps, space, seed=spec.seed)
            study = retry_db(lambda n=name, s=sampler: optuna.create_study(
                storage=storage, study_name=n, sampler=s, directions=DIRECTIONS,
                load_if_exists=True))
            cell_id = self.store.upsert_cell(self.sweep_id, name, variant.label, variant.family,
                                             target, lip)
            self.cells.append(Cell(cell_id, name, variant, target, lip, study, space))
            self.tracker.parent_run(name, {
                "varbench.sweep": spec.name, "varbench.cell": name, "git.commit": self.commit,
                "varbench.variant": variant.label, "varbench.target": target,
                "varbench.lipschitz": f"{lip:g}", **self.tags,
            })
        self._recover()
        self._reference_errors()
        for cell in self.cells:
            cell.done = len(self.store.trial_points(cell.cell_id))
            self._refresh_frontier(cell)

    def _recover(self) -> None:
        """Settle what a dead driver left behind (see module docstring)."""
        for cell in self.cells:
            recorded = {t.number: t for t in self.store.trials(cell.cell_id)}
            running = retry_db(lambda c=cell: c.study.get_trials(
                deepcopy=False, states=(TrialState.RUNNING,)))
            for t in running:
                self._settle(cell, t.number, dict(t.params), recorded.get(t.number))
            for number, row in recorded.items():
                if row.mlflow_run_id is None:
                    run_id = self._log_mlflow(cell, number, row.result, recovering=True)
                    self.store.set_trial_run_id(cell.cell_id, number, run_id)

    def _reference_errors(self) -> None:
        """Each cell's reference errors, computed once by workers."""
        c, b = self.spec.cells, self.spec.budget
        have = {row.id: row.reference for row in self.store.cells(self.sweep_id)}
        todo = [cell for cell in self.cells if not have.get(cell.cell_id)]
        refs = [reference_task.remote(cell.target, cell.lipschitz, c.channels, c.s_first,
                                      c.s_last, c.target_seed, c.inputs, float(b.p))
                for cell in todo]
        for cell, ref in zip(todo, ray.get(refs)):
            self.store.set_cell_fields(cell.cell_id, reference=ref)
            self.tracker.log_parent_metrics(cell.study_name, {
                f"reference.{k}.err_ucb": v["err_ucb"] for k, v in ref.items()})

    # --- the loop ----------------------------------------------------------------

    def run(self) -> SweepOutcome:
        t0 = time.perf_counter()
        self.preflight()
        self.prepare()
        res = self.spec.resources
        slots = cluster.capacity(res.cpus, res.gpus)
        deadline = t0 + self.spec.time_budget_s if self.spec.time_budget_s else math.inf
        ran, recorded, compute = 0, 0, 0.0
        interrupted = False
        self._emit()
        restore = self._catch_sigint()
        try:
            while True:
                if self._stop:
                    raise KeyboardInterrupt
                self._fill(slots, deadline)
                if not self._inflight:
                    break
                ready, _ = ray.wait(list(self._inflight), num_returns=len(self._inflight),
                                    timeout=0.2)
                if not ready:
                    ready, _ = ray.wait(list(self._inflight), num_returns=1, timeout=1.0)
                done = []
                for ref in ready:
                    entries = self._inflight[ref]
                    for (cell, trial, _), result in zip(entries, self._collect(ref, entries)):
                        new = self._record(cell, trial.number, result)
                        ran += 1
                        recorded += int(new)
                        compute += float(result.get("seconds") or 0.0)
                        done.append((cell, trial.number, result, new))
                    del self._inflight[ref]  # only now: a Ctrl-C above leaves it to settle
                    for cell, _, _ in entries:
                        cell.in_flight -= 1
                # keep the workers busy before the slower bookkeeping (MLflow, frontier)
                self._fill(slots, deadline)
                for cell, number, result, new in done:
                    self._publish(cell, number, result, new)
                for cell in {id(c): c for c, _, _, _ in done}.values():
                    self._refresh_frontier(cell)  # once per cell, however many finished
                self._emit()
        except KeyboardInterrupt:
            interrupted = True
            self._cancel_inflight()
        finally:
            restore()
        status = "interrupted" if interrupted else "completed"
        self.store.set_sweep_status(self.sweep_id, status)
        if not interrupted:
            for cell in self.cells:
                self.tracker.finish_parent(cell.study_name)
        return SweepOutcome(
            self.spec.name, ran, recorded, time.perf_counter() - t0, compute,
            {c.study_name: c.points for c in self.cells}, interrupted,
        )

    def _catch_sigint(self) -> Callable[[], None]:
        """Ctrl-C sets a flag the loop checks at least once a second, so it is never
        swallowed inside a C extension (Ray, a database driver); a second Ctrl-C
        interrupts at once. Only the main thread can own the handler."""
        self._stop = False
        if threading.current_thread() is not threading.main_thread():
            return lambda: None

        def handler(signum, frame):
            if self._stop:
                raise KeyboardInterrupt
            self._stop = True

        previous = signal.signal(signal.SIGINT, handler)
        return lambda: signal.signal(signal.SIGINT, previous)

    def _next_cell(self) -> Cell | None:
        open_cells = [c for c in self.cells if c.done + c.in_flight < self.spec.trials]
        if not open_cells:
            return None
        return min(open_cells, key=lambda c: (c.done + c.in_flight, c.cell_id))

    def _submit(self, entries: list[tuple[Cell, optuna.Trial, dict]]) -> None:
        """One Ray task for one trial, or for several of one shape (a population)."""
        res = self.spec.resources
        keys = [f"{cell.study_name}#{trial.number}" for cell, trial, _ in entries]
        options: dict = {"num_cpus": res.cpus, "num_gpus": res.gpus,
                         "max_retries": res.max_retries, "retry_exceptions": False}
        fault = {k: os.environ[k] for k in FAULT_VARS if os.environ.get(k)}
        if fault:  # fault injection (tests): only then do tasks get a runtime env
            options["runtime_env"] = {"env_vars": fault}
        threads = max(1, int(res.cpus))
        if len(entries) == 1:
            ref = trial_task.options(**options).remote(entries[0][2], threads, keys[0])
        else:
            ref = population_task.options(**options).remote([e[2] for e in entries], threads, keys)
        self._inflight[ref] = entries

    def _ask(self, cell: Cell, attempts: int = 6) -> optuna.Trial:
        """study.ask, surviving a dropped connection.

        ask() creates the trial, then sets its params in further calls; when
        the connection drops in between, the half-made trial is failed (and,
        if it was a re-queued one, queued again) before asking anew.
        """
        for i in range(attempts):
            try:
                return cell.study.ask(cell.space)
            except (OperationalError, InterfaceError, StorageInternalError):
                if i == attempts - 1:
                    raise
                time.sleep(0.2 * 2**i)
                retry_db(lambda: self._fail_orphans(cell))
        raise AssertionError("unreachable")

    def _fail_orphans(self, cell: Cell) -> None:
        ours = [e for entries in self._inflight.values() for e in entries]
        ours += self._pending + self._outgoing  # asked, not sent yet: not orphans
        mine = {t.number for c, t, _ in ours if c is cell}
        for t in cell.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number in mine:
                continue
            cell.study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            fixed = t.system_attrs.get("fixed_params")
            if fixed:
                cell.study.enqueue_trial(dict(fixed), user_attrs=dict(t.user_attrs))

    def _collect(self, ref: ray.ObjectRef, entries) -> list[dict]:
        """The task's results, one per trial it carried (failed ones if the task died)."""
        try:
            out = ray.get(ref)
            return out if isinstance(out, list) else [out]
        except ray.exceptions.RayError as exc:  # worker died past its retries, or a bug
            text = str(exc).strip()
            reason = f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"
            return [{"status": "failed", "reason": reason, "config": cfg} for _, _, cfg in entries]

    def _fill(self, slots: int, deadline: float) -> None:
        """Ask one trial per free slot; trials of one small shape share a slot.

        Packing only pays where stacked replicas train faster than one by one
        (``workers.population.batched``); other trials get a task each.
        """
        while len(self._inflight) < slots and time.perf_counter() < deadline:
            free = slots - len(self._inflight)
            while len(self._pending) < free:
                cell = self._next_cell()
                if cell is None:
                    break
                self._pending.append(self._ask_config(cell))
            if not self._pending:
                return
            self._outgoing, self._pending = self._pending[:free], self._pending[free:]
            groups: dict[tuple, list] = {}
            for cell, trial, cfg in self._outgoing:
                key = shape_key(cfg) if batched(cfg) else ("alone", cell.cell_id, trial.number)
                groups.setdefault(key, []).append((cell, trial, cfg))
            for key, entries in groups.items():
                if key[0] != "alone":
                    self._top_up(key, entries)
                self._submit([(c, t, cfg.to_dict()) for c, t, cfg in entries])
            self._outgoing = []

    def _ask_config(self, cell: Cell):
        trial = self._ask(cell)
        cfg = trial_config(self.spec, cell.variant, cell.target, cell.lipschitz, trial.params,
                           trial_seed(self.spec, cell.study_name, trial.number))
        cell.in_flight += 1
        return cell, trial, cfg

    def _top_up(self, key: tuple, entries: list) -> None:
        """Ask the same study for more trials while they come out in this shape.

        The first that does not is kept for the next free slot, so nothing asked
        is lost; the sampler sees those trials as running meanwhile.
        """
        cell = entries[0][0]
        while len(entries) < PACK_MAX and cell.done + cell.in_flight < self.spec.trials:
            entry = self._ask_config(cell)
            if shape_key(entry[2]) != key:
                self._pending.append(entry)
                return
            entries.append(entry)
            self._outgoing.append(entry)

    def _record(self, cell: Cell, number: int, result: dict) -> bool:
        """Store row first, then Optuna: the sampler sees the result before the next ask.

        A crash after this and before ``_publish`` is settled on resume (rows
        without an MLflow run get one, the frontier is recomputed).
        """
        new = self.store.record_trial(cell.cell_id, number, result)
        if new:
            cell.done += 1
        self._tell(cell, number, result["status"], result.get("n_params"), result.get("err_ucb"))
        return new

    def _publish(self, cell: Cell, number: int, result: dict, new: bool) -> None:
        """The MLflow child run, after the freed slot has work again."""
        if new:
            run_id = self._log_mlflow(cell, number, result)
            self.store.set_trial_run_id(cell.cell_id, number, run_id)

    def _tell(self, cell: Cell, number: int, status: str, n_params, err_ucb) -> None:
        if status == "completed" and err_ucb is not None and math.isfinite(err_ucb):
            retry_db(lambda: cell.study.tell(number, [float(n_params), float(err_ucb)],
                                             skip_if_finished=True))
        else:
            retry_db(lambda: cell.study.tell(number, state=TrialState.FAIL, skip_if_finished=True))

    def _settle(self, cell: Cell, number: int, params: dict, row=None) -> None:
        """An interrupted trial: complete it from the store if its result was
        recorded there, else fail it and queue its params again."""
        if row is None:
            row = next((t for t in self.store.trials(cell.cell_id) if t.number == number), None)
        if row is not None:
            self._tell(cell, number, row.status, row.n_params, row.err_ucb)
        else:
            self._requeue(cell, number, params)

    def _requeue(self, cell: Cell, number: int, params: dict) -> None:
        """Fail an interrupted trial and queue its params again (once)."""
        retry_db(lambda: cell.study.tell(number, state=TrialState.FAIL, skip_if_finished=True))

        def enqueue() -> None:  # idempotent: a retried call must not queue it twice
            waiting = cell.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if not any(t.user_attrs.get("requeued_from") == number for t in waiting):
                cell.study.enqueue_trial(params, user_attrs={"requeued_from": number})

        retry_db(enqueue)

    def _log_mlflow(self, cell: Cell, number: int, result: dict, recovering: bool = False) -> str:
        cfg = result.get("config") or {}
        params = {k: v for k, v in cfg.items() if k != "eps"}
        params["eps_grid"] = ",".join(f"{e:g}" for e in self.spec.eps)
        metrics = {k: result.get(k) for k in ("err", "err_ucb", "rel_err", "n_params", "flops",
                                               "steps_run", "seconds", "sec_per_step")}
        for eps, ok in (result.get("reached") or {}).items():
            metrics[f"reached.{eps}"] = float(ok)
        tags = {
            "varbench.sweep": self.spec.name, "varbench.cell": cell.study_name,
            "git.commit": self.commit, "varbench.status": result.get("status", ""),
            "varbench.reason": result.get("reason", ""), "varbench.db": mask_url(self.settings.db_url),
            **self.tags,
        }
        return self.tracker.log_trial(cell.study_name, number, params, metrics, tags,
                                      failed=result.get("status") != "completed",
                                      recovering=recovering)

    def _refresh_frontier(self, cell: Cell) -> None:
        cell.points = frontier(self.store.trial_points(cell.cell_id), self.spec.eps)
        self.store.replace_frontier(cell.cell_id, cell.points)

    def _cancel_inflight(self) -> None:
        """Ctrl-C: cancel running tasks, then settle every RUNNING trial as a resume would
        (including one asked for but not yet sent when the interrupt came)."""
        for ref in list(self._inflight):
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort, the task may have finished
                pass
        self._inflight.clear()
        self._pending, self._outgoing = [], []
        self._recover()

    def _emit(self) -> None:
        done = sum(c.done for c in self.cells)
        total = self.spec.trials * len(self.cells)
        parts = []
        for c in self.cells:
            reached = [p for p in c.points if p.reached]
            if reached:
                p = min(reached, key=lambda q: q.eps)
                parts.append(f"L={c.lipschitz:g} {c.target}: ε={p.eps:g} at N={p.n_star}")
        self.on_progress(Progress(done, total, "; ".join(parts)))


def run_sweep(spec: SweepSpec, settings: Settings, address: str | None = None,
              on_progress: Callable[[Progress], None] | None = None,
              tags: dict[str, str] | None = None) -> SweepOutcome:
    return Driver(spec, settings, address, on_progress, tags).run()
