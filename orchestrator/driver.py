"""The sweep driver: the loop that hands out trials and collects their results.

One driver per sweep (local, or inside a Ray job). It asks Optuna for trials,
runs them as Ray tasks with resource requests and retries, collects results as
they finish and, for each, in this order: records it in the results store
(once: unique per cell and trial number), tells Optuna, hands the freed
worker its next trial, then logs the result on the trial's MLflow child run
(started RUNNING when the trial was handed out) and refreshes the cell's
frontier. With ``budget.rungs`` a trial pauses at each rung and the driver
continues it from its state file, or prunes it, by its bar as it stands then
(``orchestrator.rungs``). After the loop, when the spec turns the check on, it retrains each
reached frontier point at a larger budget and stores its verdict
(``_run_checks``, ``sweeps.convergence``). Workers only compute; ``studies`` talks to Optuna and
``recorder`` does every write to the store and MLflow.

One driver per sweep: before it touches the sweep, the driver takes the
sweep's lease in the store (``lease``), and a second driver is refused or
waits. Resume: running the same sweep again continues it. Optuna trials left RUNNING
by a dead driver are completed from the store when their result was recorded,
or failed and their params re-queued when it was not; store rows without an
MLflow run get theirs (found again by tag, or logged), and MLflow runs left
RUNNING for trials never recorded end KILLED.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import optuna
import ray

from varbench.orchestrator import cluster
from varbench.orchestrator.errors import RunFailed
from varbench.orchestrator.recorder import Recorder
from varbench.orchestrator.rungs import Fidelity
from varbench.orchestrator.settings import Settings
from varbench.orchestrator.store import trial_point
from varbench.orchestrator.studies import Studies, study_name
from varbench.sweeps.convergence import FAILING, REACHING, judge, plan_checks
from varbench.sweeps.frontier import FrontierPoint, bar_for
from varbench.sweeps.inference import told_error
from varbench.sweeps.space import flow_settings, search_space, trial_config, trial_seed
from varbench.sweeps.spec import ModelVariant, SweepSpec
from varbench.workers.config import TrialConfig
from varbench.workers.population import PER_REPLICA, batched, population_size, shape_key
from varbench.workers.remote import (
    FAULT_VARS,
    checkpoint_task,
    population_task,
    reference_task,
    trial_task,
    warm_task,
)
from varbench.workers.stopping import rung_steps
from varbench.workers.training import param_count

log = logging.getLogger("varbench.driver")


def _import_plotting() -> None:
    """Import matplotlib for the close's figures (``report._mpl``); a failure is left
    for the figures themselves to report."""
    try:
        from varbench.orchestrator import report

        report._mpl()
    except Exception:  # noqa: BLE001 - reported where the figures are drawn
        log.debug("importing matplotlib ahead failed", exc_info=True)


@dataclass
class Cell:
    cell_id: int
    study_name: str
    variant: ModelVariant
    target: str
    lipschitz: float
    study: optuna.Study
    space: dict = field(default_factory=dict)
    steps: int = 0  # the cell's step budget (a spec may list several: one cell each)
    done: int = 0
    in_flight: int = 0
    points: list[FrontierPoint] = field(default_factory=list)
    # FlowAR: the other inference settings' cells (setting -> (cell id, name)) and
    # their frontiers; ``points`` is the study's own (cheapest) setting's
    settings: dict[str, tuple[int, str]] = field(default_factory=dict)
    setting_points: dict[str, list[FrontierPoint]] = field(default_factory=dict)


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
    # where the driver's own time went (benchmarks/run.py): set-up (checks, Ray start
    # unless already connected, lease, studies, the first trials sent), then the loop's
    # time blocked in ray.wait; the rest of the loop is per-trial driver work (and the
    # reference errors, recorded as they come in)
    setup_seconds: float = 0.0
    wait_seconds: float = 0.0
    checks_run: int = 0  # convergence-check trials run by this driver


class Driver:
    def __init__(
        self,
        spec: SweepSpec,
        settings: Settings,
        address: str | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        tags: dict[str, str] | None = None,
        wait_lock: bool = False,
        on_wait: Callable[[str], None] | None = None,
    ):
        self.spec = spec
        self.wait_lock = wait_lock
        self.on_wait = on_wait or (lambda line: log.warning("%s", line))
        self.settings = settings
        self.address = address
        self.on_progress = on_progress or (lambda p: None)
        self.recorder = Recorder(settings, spec.name, tags)
        self.studies: Studies | None = None
        self.cells: list[Cell] = []
        # a task carries one trial, or several of one shape trained together
        self._inflight: dict[ray.ObjectRef, list[tuple[Cell, optuna.Trial, dict]]] = {}
        self._pending: list[tuple[Cell, optuna.Trial, dict]] = []  # asked, not yet sent
        self._outgoing: list[tuple[Cell, optuna.Trial, TrialConfig]] = []  # being sent
        self._stop = False  # set by Ctrl-C
        self._restore_sigint: Callable[[], None] | None = None
        self._checked = False
        self._warming: list[ray.ObjectRef] = []  # warm_task per slot, sent at preflight
        self._references: dict[str, ray.ObjectRef] = {}  # reference_task per cell less budget
        self._sizes: dict[tuple, int] = {}  # N per shape, for the bars
        self._checks_inflight: dict[ray.ObjectRef, tuple[Cell, str, int, dict, str]] = {}
        # multi-fidelity (``budget.rungs``): each trial's rungs, by (cell id, number), and
        # the paused trials that passed theirs, to continue before any new trial
        self._fidelity: dict[tuple[int, int], Fidelity] = {}
        self._resumes: list[tuple[Cell, optuna.Trial, dict, str]] = []
        self._plotting: threading.Thread | None = None  # matplotlib, imported ahead
        # where the trials train: one population task per GPU when the spec asks for GPUs
        self.device_type = "cuda" if spec.resources.gpus > 0 else "cpu"

    # --- set-up ----------------------------------------------------------------

    def preflight(self) -> None:
        """Check every address before anything is written: Ray, the database, MLflow.

        Once per driver: the CLI calls it before showing progress, ``run`` again.
        """
        if self._checked:
            return
        self._arm()  # first: a Ctrl-C during ray.init is deferred, not raised inside it
        try:
            if self.address not in (None, "", "local", "auto"):
                cluster.check_address(self.address)
            self.recorder.check()
            cluster.connect(self.address)
            cluster.check_fits(self.spec.resources.cpus, self.spec.resources.gpus)
            self._start_workers()
        except BaseException:
            self._disarm()
            raise
        self._checked = True
        self._check_stop()

    def _start_workers(self) -> None:
        """Send, before the stores are set up, the work that needs none: every
        cell's reference errors (a resumed cell has them already; computing them
        again costs a worker 0.1 s) and one ``warm_task`` per slot. The workers
        import torch and our modules while the driver migrates schemas and opens
        studies and MLflow runs, instead of after. Warm-ups go with the trials'
        options, so they land on the workers the trials will use."""
        c, b = self.spec.cells, self.spec.budget
        for variant, target, lip, steps in self.spec.cell_keys():
            key = study_name(self.spec, variant, target, lip, steps).removesuffix(
                b.name_suffix(steps))
            if key not in self._references:  # one per cell less its budget, seeded by it
                self._references[key] = reference_task.remote(
                    target, lip, c.channels, c.s_first, c.s_last, c.target_seed, c.inputs,
                    float(b.p), trial_seed(self.spec, key, -1))
        options, _ = self._task_options()
        slots = cluster.capacity(self.spec.resources.cpus, self.spec.resources.gpus)
        self._warming = [warm_task.options(**options).remote() for _ in range(slots)]

    def _warmed(self) -> None:
        """Collect the warm-up tasks (nobody waits on them: trials queue behind them
        on the workers); one that failed only costs its worker the imports again,
        so it is logged, never raised."""
        try:
            ray.get(self._warming)
        except ray.exceptions.RayError as exc:
            log.warning("warming a worker failed: %s", str(exc).splitlines()[0][:200])
        self._warming = []

    def prepare(self) -> None:
        spec, rec = self.spec, self.recorder
        self.studies = rec.set_up_schema(lambda: Studies(self.settings.db_url))
        # one driver per sweep: nothing of the sweep is touched before the lease is ours
        rec.take_lease(wait=self.wait_lock, cancelled=lambda: self._stop,
                       on_wait=lambda h: self.on_wait(
                           f"waiting for sweep {spec.name!r}: its lease is held by {h.describe()}"))
        self._check_stop()
        rec.open_sweep(spec)
        for variant, target, lip, steps in spec.cell_keys():
            name = study_name(spec, variant, target, lip, steps)
            space = search_space(spec, variant)
            study = self.studies.open(spec, name, space, attrs={
                "sweep": spec.name, "cell": name, "variant": variant.label, "target": target,
                "lipschitz": lip, "eps": list(spec.eps), "spec_hash": spec.spec_hash()},
                family=variant.family)
            # FlowAR: one training per trial, one frontier per inference setting
            keys = flow_settings(spec) if variant.family == "flowar" else []
            cell_id = rec.open_cell(name, variant, target, lip, space,
                                    setting=keys[0] if keys else None, steps=steps)
            others = rec.open_setting_cells(cell_id, name, variant, target, lip, keys[1:],
                                            space, steps) if len(keys) > 1 else {}
            self.cells.append(Cell(cell_id, name, variant, target, lip, study, space,
                                   settings=others, steps=steps))
        self._recover()
        self._check_stop()
        for cell in self.cells:
            cell.done = len(rec.trials(cell.cell_id))
            self._refresh_frontier(cell)

    def _recover(self) -> None:
        """Settle what a dead driver left behind (see module docstring). Runs only
        under this driver's lease, so every RUNNING trial it finds belongs to a
        driver whose lease has expired (or to this one, after a Ctrl-C)."""
        for cell in self.cells:
            self.recorder.fill_settings(cell.cell_id)  # setting rows a crash left unwritten
            recorded = {t.number: t for t in self.recorder.trials(cell.cell_id)}
            for t in self.studies.running(cell.study):
                row = recorded.get(t.number)
                if row is not None:  # recorded, not told: tell it now
                    self.studies.tell(cell.study, t.number, row.status, row.n_params,
                                      told_error(row.result or {})[0])
                else:  # never recorded: run its params again (a rung's state goes)
                    self.studies.requeue(cell.study, t.number, dict(t.params))
                    self.recorder.drop_checkpoint(cell.study_name, t.number)
            for number, row in recorded.items():
                if row.mlflow_run_id is None:  # its run gets the result (or is made)
                    self.recorder.trial_result(cell.cell_id, cell.study_name, number,
                                               row.result, recovering=True)
            # runs left RUNNING for trials never recorded end KILLED, never duplicated
            self.recorder.close_interrupted(cell.study_name, set(recorded))

    def _reference_errors(self, wait: bool = True) -> None:
        """Record each cell's reference errors, sent at preflight (``_start_workers``):
        one result per cell less its budget (one target has one reference at every
        budget), on each of its cells that has none yet. ``wait=False`` records the
        ones already computed and leaves the rest for a later call: the loop calls it
        so, as Ray runs the reference and trial tasks in no promised order. A reference
        task that failed is logged and its cells stay without one (a resume computes
        it again); the trials already out go on."""
        if not self._references:
            return
        keys = list(self._references)
        if not wait:
            ready = set(ray.wait([self._references[k] for k in keys], num_returns=len(keys),
                                 timeout=0)[0])
            keys = [k for k in keys if self._references[k] in ready]
            if not keys:
                return
        b = self.spec.budget
        missing = self.recorder.cells_without_reference()
        for key in keys:
            ref = self._references.pop(key)
            cells = [c for c in self.cells if c.cell_id in missing
                     and c.study_name.removesuffix(b.name_suffix(c.steps)) == key]
            if not cells:
                continue
            try:
                value = ray.get(ref)
            except ray.exceptions.RayError as exc:
                log.warning("reference errors of %s failed, left for a resume: %s", key,
                            str(exc).strip().splitlines()[0][:200] if str(exc).strip() else
                            type(exc).__name__)
                continue
            for cell in cells:
                self.recorder.record_reference(cell.cell_id, cell.study_name, value)

    # --- the loop ----------------------------------------------------------------

    def run(self) -> SweepOutcome:
        """Set up (checks, lease, recovery), then the loop, which records the
        reference errors as they come in.

        The Ctrl-C handler is in place from the first step, so an interrupt at
        any point ends as one: the sweep is marked interrupted, its RUNNING
        trials settled, the lease released.
        """
        t0 = time.perf_counter()
        ran, recorded, compute, checks = 0, 0, 0.0, 0
        setup, waited = 0.0, 0.0
        interrupted, ended = False, None
        self._arm()
        try:
            self.preflight()
            self.prepare()
            res = self.spec.resources
            slots = cluster.capacity(res.cpus, res.gpus)
            deadline = t0 + self.spec.time_budget_s if self.spec.time_budget_s else math.inf
            # the first trials go out before the reference errors are collected (in the
            # loop, as they come): they queue on the workers behind the warm-ups
            self._fill(slots, deadline)
            setup = time.perf_counter() - t0
            self._emit()
            while True:
                self._check_stop()
                lost = self.recorder.lease_lost()
                if lost is not None:
                    raise RunFailed(f"sweep {self.spec.name!r}: lost its lease to {lost}; "
                                    "stopped without recording more")
                self._fill(slots, deadline)
                if not self._inflight:
                    break
                t_wait = time.perf_counter()
                ready, _ = ray.wait(list(self._inflight), num_returns=len(self._inflight),
                                    timeout=0.2)
                if not ready:
                    ready, _ = ray.wait(list(self._inflight), num_returns=1, timeout=1.0)
                waited += time.perf_counter() - t_wait
                done, paused = [], []
                for ref in ready:
                    entries = self._inflight[ref]
                    for (cell, trial, cfg), (result, blob) in zip(entries,
                                                                  self._collect(ref, entries)):
                        compute += float(result.get("seconds") or 0.0)  # this task's share
                        fid = self._fidelity.get((cell.cell_id, trial.number))
                        if fid is not None and result.get("paused"):
                            paused.append((cell, trial, cfg, result, blob, fid))
                            continue
                        if fid is not None:  # its last segment: the whole trial's result
                            result = self._fidelity.pop((cell.cell_id, trial.number)).finish(
                                result)
                        done.append(self._land(cell, trial, result, blob))
                    del self._inflight[ref]  # only now: a Ctrl-C above leaves it to settle
                    for cell, _, _ in entries:
                        cell.in_flight -= 1
                for cell, trial, result in self._at_rungs(paused, done):  # pruned there
                    done.append(self._land(cell, trial, result, None))
                ran += len(done)
                recorded += sum(int(new) for *_, new in done)
                # keep the workers busy before the slower bookkeeping (MLflow, frontier)
                self._fill(slots, deadline)
                self._warm_plotting()
                for cell, number, result, new in done:
                    if new:
                        self.recorder.trial_result(cell.cell_id, cell.study_name, number,
                                                   result)
                for cell in {id(c): c for c, _, _, _ in done}.values():
                    self._refresh_frontier(cell)  # once per cell, however many finished
                self._reference_errors(wait=False)
                self._emit()
            self._reference_errors()  # those not yet in (none, as a rule)
            self._warmed()  # long done: the first trials queued behind them on the workers
            if self._plotting is not None:
                self._plotting.join()
            if self.spec.check.enabled:
                checks = self._run_checks()
            ended = "completed"
        except KeyboardInterrupt:
            interrupted, ended = True, "interrupted"
            if self.recorder.lease is not None and self.recorder.lease_lost() is None:
                self._cancel_inflight()  # the sweep is ours to settle
            else:  # not ours (before the lease, or lost): stop what we sent, touch nothing
                self._stop_tasks()
        except BaseException:  # a resume settles the store; no task trains on meanwhile
            self._stop_tasks()
            raise
        finally:
            self._disarm()
            try:  # an error other than Ctrl-C leaves the status as it was: a resume settles it
                ours = self.recorder.lease is not None and self.recorder.lease_lost() is None
                if ended is not None and ours and self.recorder.sweep_id is not None:
                    self.recorder.close_sweep(ended, [n for c in self.cells for n in
                                                      (c.study_name, *self._setting_names(c))])
            finally:
                self.recorder.release_lease()
        fronts = {}
        for c in self.cells:
            fronts[c.study_name] = c.points
            fronts.update({name: c.setting_points.get(k, []) for k, (_, name) in c.settings.items()})
        return SweepOutcome(
            self.spec.name, ran, recorded, time.perf_counter() - t0, compute, fronts, interrupted,
            setup, waited, checks,
        )

    def _land(self, cell: Cell, trial: optuna.Trial, result: dict,
              blob: bytes | None) -> tuple[Cell, int, dict, bool]:
        """A trial's final result: its kept state to a file, then the store and Optuna
        (``_record``). A trial that paused at rungs and keeps no state loses its file."""
        if blob is not None and result.get("status") == "completed":
            # the file first: a stored result never names a missing file
            result["checkpoint"] = self.recorder.save_checkpoint(
                cell.study_name, trial.number, blob)
        elif result.get("rungs"):
            self.recorder.drop_checkpoint(cell.study_name, trial.number)
        return cell, trial.number, result, self._record(cell, trial, result)

    def _at_rungs(self, paused: list, done: list) -> list[tuple[Cell, optuna.Trial, dict]]:
        """Judge each trial paused at a rung against its bar as the frontier stands now,
        with the results of this same batch in it (``orchestrator.rungs``). One that
        passes has its state written to a file and is queued to go on before any new
        trial; the others come back to be recorded as pruned."""
        if not paused:
            return []
        touched = {id(c) for c, _, _, new in done if new}
        for cell in {id(c): c for c, *_ in paused}.values():
            if id(cell) in touched:  # read only: the loop stores and publishes it after _fill
                cell.points = self.recorder.current_frontier(cell.cell_id, self.spec.eps)
                for key, (cid, _) in cell.settings.items():
                    cell.setting_points[key] = self.recorder.current_frontier(cid, self.spec.eps)
        out = []
        for cell, trial, cfg, result, blob, fid in paused:
            bar = self._with_bar(cell, TrialConfig.from_dict(cfg)).bar
            why = fid.judge(result, bar, int(cfg["steps"]))
            if why is not None:
                del self._fidelity[(cell.cell_id, trial.number)]
                out.append((cell, trial, fid.pruned(result, why)))
                continue
            rel = self.recorder.save_checkpoint(cell.study_name, trial.number, blob)
            self._resumes.append((cell, trial, cfg, rel))
            cell.in_flight += 1
        return out

    def _continue(self, cell: Cell, trial: optuna.Trial, cfg: dict, rel: str) -> None:
        """A trial that passed its rung, resumed from the file its state was written to,
        with the bar as it stands now (its own rule judges the rest of the run by it)."""
        fid = self._fidelity[(cell.cell_id, trial.number)]
        blob = self.recorder.load_checkpoint(rel)
        cfg = self._with_bar(cell, TrialConfig.from_dict(cfg)).to_dict()
        options, threads = self._task_options()
        ref = checkpoint_task.options(**options).remote(
            cfg, threads, f"{cell.study_name}#{trial.number}", blob,
            fid.stops[0] if fid.stops else None)
        self._inflight[ref] = [(cell, trial, cfg)]

    @staticmethod
    def _setting_names(cell: Cell) -> list[str]:
        return [name for _, name in cell.settings.values()]

    def _arm(self) -> None:
        """Ctrl-C sets a flag the driver checks between steps and at least once a
        second in the loop, so it is never raised inside a C extension (Ray's
        start-up, a database driver); a second Ctrl-C interrupts at once. Only
        the main thread can own the handler."""
        if self._restore_sigint is not None:
            return
        if threading.current_thread() is not threading.main_thread():
            self._restore_sigint = lambda: None
            return

        def handler(signum, frame):
            if self._stop:
                raise KeyboardInterrupt
            self._stop = True

        previous = signal.signal(signal.SIGINT, handler)
        self._restore_sigint = lambda: signal.signal(signal.SIGINT, previous)

    def _disarm(self) -> None:
        if self._restore_sigint is not None:
            self._restore_sigint()
            self._restore_sigint = None

    def _check_stop(self) -> None:
        if self._stop:
            raise KeyboardInterrupt

    def _warm_plotting(self) -> None:
        """Once the last trials are out, import matplotlib in a thread while they
        train: the close's figures waited 0.3-0.4 s for it with both cores idle
        (0.71 of its 0.8 s, quick.yaml, 2026-11-28)."""
        if self._plotting is None and not self._resumes and self._next_cell() is None:
            self._plotting = threading.Thread(target=_import_plotting, daemon=True,
                                              name="varbench-import-plotting")
            self._plotting.start()

    def _next_cell(self) -> Cell | None:
        open_cells = [c for c in self.cells if c.done + c.in_flight < self.spec.trials]
        if not open_cells:
            return None
        return min(open_cells, key=lambda c: (c.done + c.in_flight, c.cell_id))

    def _task_options(self) -> tuple[dict, int]:
        """Ray options (resources, retries, fault injection) and threads of a trial task."""
        res = self.spec.resources
        options: dict = {"num_cpus": res.cpus, "num_gpus": res.gpus,
                         "max_retries": res.max_retries, "retry_exceptions": False}
        fault = {k: os.environ[k] for k in FAULT_VARS if os.environ.get(k)}
        if fault:  # fault injection (tests): only then do tasks get a runtime env
            options["runtime_env"] = {"env_vars": fault}
        return options, max(1, int(res.cpus))

    def _submit(self, entries: list[tuple[Cell, optuna.Trial, dict]]) -> None:
        """One Ray task for one trial, or for several of one shape (a population)."""
        keys = [f"{cell.study_name}#{trial.number}" for cell, trial, _ in entries]
        options, threads = self._task_options()
        fid = self._fidelity.get((entries[0][0].cell_id, entries[0][1].number))
        if len(entries) == 1 and (fid is not None or entries[0][2].get("keep_checkpoint")):
            # state comes back too: at its first rung, or at the end
            at_rung = (None, fid.stops[0]) if fid is not None else ()  # (resume, pause_at)
            ref = checkpoint_task.options(**options).remote(entries[0][2], threads, keys[0],
                                                            *at_rung)
        elif len(entries) == 1:
            ref = trial_task.options(**options).remote(entries[0][2], threads, keys[0])
        else:
            ref = population_task.options(**options).remote([e[2] for e in entries], threads, keys)
        self._inflight[ref] = entries
        # the task first, its MLflow run while it trains: the freed worker does not wait
        # on MLflow (25-38 ms a trial on SQLite, cProfile); the run is RUNNING before any
        # result is read
        for cell, trial, cfg in entries:
            run_id = self.recorder.start_trial(cell.study_name, trial.number, cfg, cell.space)
            self.studies.set_trial_attrs(trial, {"mlflow_run_id": run_id})

    def _ours(self, cell: Cell) -> set[int]:
        """Trial numbers of ``cell`` this driver holds: in flight, asked, being sent."""
        held = [e for entries in self._inflight.values() for e in entries]
        held += self._pending + self._outgoing + [r[:3] for r in self._resumes]
        return {t.number for c, t, _ in held if c is cell}

    def _collect(self, ref: ray.ObjectRef, entries) -> list[tuple[dict, bytes | None]]:
        """The task's results, one per trial it carried (failed ones if the task died),
        each with the checkpoint a ``checkpoint_task`` hands back beside it."""
        try:
            out = ray.get(ref)
            if isinstance(out, tuple):  # checkpoint_task: (result, state)
                return [out]
            return [(r, None) for r in (out if isinstance(out, list) else [out])]
        except ray.exceptions.RayError as exc:  # worker died past its retries, or a bug
            text = str(exc).strip()
            reason = f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"
            return [({"status": "failed", "reason": reason, "config": cfg}, None)
                    for _, _, cfg in entries]

    def _fill(self, slots: int, deadline: float) -> None:
        """Ask one trial per free slot; trials of one small shape share a slot.

        Packing only pays where stacked replicas train faster than one by one
        (``workers.population.batched``); other trials get a task each.
        """
        while self._resumes and len(self._inflight) < slots:  # past the deadline too
            self._continue(*self._resumes.pop(0))
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
                # a trial with seed replicas is its own population (run_trial stacks them);
                # one that keeps its checkpoint or pauses at rungs trains alone (populations
                # keep no state)
                key = (shape_key(cfg) if batched(cfg, self.device_type) and cfg.replicas == 1
                       and not cfg.keep_checkpoint
                       and (cell.cell_id, trial.number) not in self._fidelity
                       else ("alone", cell.cell_id, trial.number))
                groups.setdefault(key, []).append((cell, trial, cfg))
            for key, entries in groups.items():
                if key[0] != "alone" and self._can_share(entries[0][0]):
                    self._top_up(key, entries)
                self._submit([(c, t, self._with_bar(c, cfg).to_dict()) for c, t, cfg in entries])
            self._outgoing = []

    def _with_bar(self, cell: Cell, cfg: TrialConfig) -> TrialConfig:
        """The trial with the error it must beat to move the cell's frontier, as the
        frontier stands now (workers.stopping). With pruning off the worker only
        records where the rule would have stopped it (how wrong prunes are counted)."""
        key = shape_key(cfg)
        if key not in self._sizes:
            self._sizes[key] = param_count(cfg)
        # FlowAR: a trial that moves any setting's frontier matters, so the most
        # lenient bar over the settings (none until every setting has one)
        bars = [bar_for(pts, self._sizes[key])
                for pts in (cell.points, *cell.setting_points.values())]
        return replace(cfg, bar=None if None in bars else max(bars))

    def _ask_config(self, cell: Cell):
        trial = self.studies.ask(cell.study, cell.space, lambda: self._ours(cell))
        cfg = trial_config(self.spec, cell.variant, cell.target, cell.lipschitz, trial.params,
                           trial_seed(self.spec, cell.study_name, trial.number), cell.steps)
        if self.spec.check.enabled and cfg.replicas == 1:  # a frontier trial may be continued
            cfg = replace(cfg, keep_checkpoint=True)
        stops = rung_steps(self.spec.budget.rungs, cfg.steps, cfg.eval_every)
        if stops and cfg.replicas == 1:  # seed replicas train as one population: no rungs
            self._fidelity[(cell.cell_id, trial.number)] = Fidelity(stops)
        cell.in_flight += 1
        return cell, trial, cfg

    @staticmethod
    def _can_share(cell: Cell) -> bool:
        """Whether the cell's study may ask two trials of one shape: they differ only
        in what a population varies per replica (``PER_REPLICA``), so only a searched
        lr, or a sampler that repeats a configuration, gives one. The frontier
        sampler repeats one only once the space is exhausted (``repeats_after``):
        before that, topping up its trials would only ask the next trial early,
        before results it should see (a third trial in flight on two slots), and
        hand trials out cell by cell."""
        if any(k in PER_REPLICA for k in cell.space):
            return True
        repeats_after = getattr(cell.study.sampler, "repeats_after", lambda space: 0)
        return cell.done + cell.in_flight >= repeats_after(cell.space)

    def _top_up(self, key: tuple, entries: list) -> None:
        """Ask the same study for more trials while they come out in this shape.

        The first that does not is kept for the next free slot, so nothing asked
        is lost; the sampler sees those trials as running meanwhile.
        """
        cell = entries[0][0]
        limit = population_size(entries[0][2], self.device_type)
        while len(entries) < limit and cell.done + cell.in_flight < self.spec.trials:
            entry = self._ask_config(cell)
            if shape_key(entry[2]) != key:
                self._pending.append(entry)
                return
            entries.append(entry)
            self._outgoing.append(entry)

    def _record(self, cell: Cell, trial: optuna.Trial, result: dict) -> bool:
        """Store row first, then Optuna: the sampler sees the result before the next ask.

        A crash after this and before the MLflow run is logged is settled on
        resume (rows without an MLflow run get one, the frontier is recomputed).
        """
        number = trial.number
        new = self.recorder.record_trial(cell.cell_id, number, result)
        if new:
            cell.done += 1
        told, setting = told_error(result)  # FlowAR: the best over its inference settings
        attrs = {"err": result.get("err"), "err_ucb": result.get("err_ucb"),
                 "reason": result.get("reason", ""), "population": result.get("population", 1),
                 "replicas": len(result.get("replica_err_ucb") or []) or 1,
                 # the lr it trained at and how it was chosen (a param only when searched)
                 "lr": (result.get("config") or {}).get("lr"),
                 "lr_choice": (result.get("config") or {}).get("lr_choice")}
        if setting is not None:
            attrs.update(told_err_ucb=told, flow_setting=setting, flow_err_ucb={
                f"{e['flow_steps']}:{e['flow_solver']}": e["err_ucb"]
                for e in result.get("flow_evals") or []})
        self.studies.set_trial_attrs(trial, attrs)
        self.studies.tell(cell.study, number, result["status"], result.get("n_params"), told)
        return new

    # --- the convergence check ---------------------------------------------------------

    def _run_checks(self) -> int:
        """Retrain each cell's reached frontier points at ``check.factor`` times the
        budget (``sweeps.convergence``): the failing neighbour afresh, the N* trial
        continued from its checkpoint; then store every point's verdict. A check
        already recorded is never rerun, so a resumed sweep only runs what is missing."""
        factor, rec = self.spec.check.factor, self.recorder
        options, threads = self._task_options()
        for cell in self.cells:
            rows = {t.number: t for t in rec.trials(cell.cell_id)}
            plans = plan_checks([trial_point(t) for t in rows.values()], cell.points)
            done = {(c.kind, c.trial_number) for c in rec.checks(cell.cell_id)
                    if c.factor == factor}
            for plan in plans:
                todo = [(REACHING, plan.reaching)] + (
                    [(FAILING, plan.failing)] if plan.failing is not None else [])
                for kind, number in todo:
                    if (kind, number) in done:
                        continue
                    done.add((kind, number))
                    row = rows[number]
                    cfg = replace(TrialConfig.from_dict(row.config), keep_checkpoint=False,
                                  bar=None, prune=False, early_stop=False)
                    cfg = replace(cfg, steps=cfg.steps * factor).to_dict()
                    key = f"{cell.study_name}#{kind}{number}x{factor}"
                    blob = (rec.load_checkpoint((row.result or {}).get("checkpoint"))
                            if kind == REACHING and cfg["replicas"] == 1 else None)
                    if blob is not None:  # the N* trial, continued from where it ended
                        ref = checkpoint_task.options(**options).remote(cfg, threads, key, blob)
                    else:  # afresh: the same config and seed(s), more steps (the failing
                        # neighbour; an N* trial with seed replicas or without a checkpoint)
                        ref = trial_task.options(**options).remote(cfg, threads, key)
                    mode = "continued" if blob is not None else "afresh"
                    self._checks_inflight[ref] = (cell, kind, number, cfg, mode)
        ran, total = 0, len(self._checks_inflight)
        while self._checks_inflight:
            self._check_stop()
            lost = rec.lease_lost()
            if lost is not None:
                raise RunFailed(f"sweep {self.spec.name!r}: lost its lease to {lost}; "
                                "stopped without recording more")
            ready, _ = ray.wait(list(self._checks_inflight), num_returns=1, timeout=1.0)
            for ref in ready:
                cell, kind, number, cfg, mode = self._checks_inflight[ref]
                result, _ = self._collect(ref, [(cell, None, cfg)])[0]
                rec.record_check(cell.cell_id, kind, number, factor, {**result, "mode": mode})
                del self._checks_inflight[ref]
                ran += 1
                self.on_progress(Progress(sum(c.done for c in self.cells),
                                          self.spec.trials * len(self.cells),
                                          f"convergence check: {ran}/{total} at {factor}x"))
        for cell in self.cells:
            self._judge(cell)
            # only N* trials are ever continued: the other trials' states go
            keep = {p.trial_number for p in cell.points if p.reached}
            gone = rec.drop_checkpoints(cell.study_name, keep)
            if gone:
                log.info("%s: removed %d checkpoints of trials that are not N*",
                         cell.study_name, gone)
        return ran

    def _judge(self, cell: Cell) -> None:
        """The verdict of each of the cell's points, from its recorded checks."""
        factor = self.spec.check.factor
        rows = self.recorder.trials(cell.cell_id)
        plans = plan_checks([trial_point(t) for t in rows], cell.points)
        checks = {(c.kind, c.trial_number): {"status": c.status, "err_ucb": c.err_ucb,
                                             "reason": c.reason}
                  for c in self.recorder.checks(cell.cell_id) if c.factor == factor}
        originals = {t.number: {"err": t.err, "err_ucb": t.err_ucb} for t in rows}
        verdicts = judge(cell.points, plans, checks, originals, factor)
        self.recorder.set_verdicts(cell.cell_id, [v.to_dict() for v in verdicts])

    def _refresh_frontier(self, cell: Cell) -> None:
        cell.points = self.recorder.refresh_frontier(cell.cell_id, self.spec.eps)
        for key, (cid, _) in cell.settings.items():
            cell.setting_points[key] = self.recorder.refresh_frontier(cid, self.spec.eps)

    def _cancel_inflight(self) -> None:
        """Ctrl-C: cancel running tasks, then settle every RUNNING trial as a resume would
        (including one asked for but not yet sent when the interrupt came)."""
        self._stop_tasks()
        self._inflight.clear()
        self._checks_inflight.clear()
        self._pending, self._outgoing, self._resumes = [], [], []
        self._fidelity.clear()
        self._recover()
        self.recorder.kill_open_trials("the sweep was interrupted; the trial runs again on resume")

    def _stop_tasks(self, settle_s: float = 5.0) -> None:
        """Cancel every task this driver sent that may still run (best effort), those
        sent at preflight included, and give Ray ``settle_s`` to settle them: a task
        still pending when the process exits made Ray's core print "Failed to push
        error to driver" under a refused run's one-line error."""
        refs = [*self._inflight, *self._checks_inflight, *self._warming,
                *self._references.values()]
        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - best effort, the task may have finished
                pass
        if refs:
            try:
                ray.wait(refs, num_returns=len(refs), timeout=settle_s)
            except Exception:  # noqa: BLE001 - Ray itself may be what failed: keep that error
                pass
        self._warming, self._references = [], {}

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
              tags: dict[str, str] | None = None, wait_lock: bool = False) -> SweepOutcome:
    return Driver(spec, settings, address, on_progress, tags, wait_lock=wait_lock).run()
