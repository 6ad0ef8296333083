"""The single writer: every write to the results store and to MLflow goes through here.

Workers compute and return; the driver decides; the recorder writes. It
holds the only ``ResultsStore`` (the writing one) and the ``Tracker`` of a
sweep, and shapes what they receive (rows, MLflow payloads, report
artifacts, nightly rows), so no other module assembles a write. Read-only
commands get a ``ResultsView`` instead, which has no write methods.

A trial's MLflow life follows the trial's, as lifecycle hooks the driver
calls: ``start_trial`` when it is handed to a worker (the run is RUNNING),
``trial_result`` when its result is recorded (metrics, learning curves, then
FINISHED or FAILED), ``end_trial`` / ``kill_open_trials`` when a sweep is
interrupted (KILLED), ``close_interrupted`` when a resume finds runs a dead
driver left RUNNING. Each study's parent run summarises it: the cell, budget
and search space as params, ``nstar.eps_<ε>`` metrics updated as the
frontier moves, the frontier table, the spec and the err-vs-N plot.
"""

from __future__ import annotations

import base64
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import yaml

from varbench.orchestrator.lease import Lease
from varbench.orchestrator.queries import lr_text
from varbench.orchestrator.settings import Settings, check_workdir
from varbench.orchestrator.store import Holder, ResultsStore, TrialRow, mask_url, sqlite_path
from varbench.orchestrator.tracking import TRIAL_TAG, Tracker, git_commit, source_tags
from varbench.sweeps.frontier import FrontierPoint, frontier, frontier_intervals
from varbench.sweeps.inference import (
    parse_key,
    setting_cell_name,
    setting_label,
    setting_result,
)
from varbench.sweeps.spec import ModelVariant, SweepSpec

T = TypeVar("T")
TRIAL_METRICS = ("err", "err_ucb", "rel_err", "n_params", "flops", "steps_run", "seconds",
                 "sec_per_step", "population", "monitor_err")
NSTAR_NOTE = ("N*(ε) is the smallest number of trainable parameters among this study's "
              "completed trials whose err_ucb (the one-sided 95% upper bound of the error on "
              "fresh inputs) is at most ε, under this training budget. An ε no trial reached "
              "has no nstar metric: it is censored (see frontier.md).")


def experiment_name(sweep: str) -> str:
    return f"varbench/{sweep}"


def _creates_file(url: str) -> bool:
    """Whether checking ``url`` creates it: a local SQLite file not there yet."""
    try:
        path = sqlite_path(url) if url.startswith("sqlite") else None
    except Exception:  # noqa: BLE001 - malformed: its own check refuses it
        return False
    return path is not None and not path.exists()


class Recorder:
    """Writes one sweep's results: store rows first, then MLflow."""

    def __init__(self, settings: Settings, sweep: str, tags: dict[str, str] | None = None):
        self.settings = settings
        self.sweep = sweep
        self.tags = dict(tags or {})
        self.store = ResultsStore(settings.db_url)
        self.tracker = Tracker(settings.tracking_uri, experiment_name(sweep),
                               artifact_root=settings.artifact_root)
        self.commit = git_commit()
        self.sweep_id: int | None = None
        self.lease: Lease | None = None
        self.spec: SweepSpec | None = None
        self._cells: dict[int, tuple[str, str]] = {}  # cell id -> (study, parent run id)
        # a FlowAR study's cell id -> its other inference settings' (setting, cell id)
        self._settings: dict[int, list[tuple[str, int]]] = {}
        self._names: dict[str, str] = {}  # study -> run-name prefix
        self._open: dict[tuple[str, int], str] = {}  # (study, number) -> RUNNING run id
        self._last_front: dict[int, list[FrontierPoint]] = {}

    def check(self) -> None:
        """The work directory usable and both stores reachable, before anything is
        written. A local SQLite store not created yet is not opened here (that
        would create it): its directory must be creatable, and the sweep's set-up
        creates it once every other check (Ray, resources) has passed."""
        check_workdir(self.settings.workdir)  # artifacts and the default stores live there
        for url, check, flag in ((self.settings.db_url, self.store.check, "--db"),
                                 (self.settings.tracking_uri, self.tracker.check, "--tracking")):
            if _creates_file(url):
                check_workdir(sqlite_path(url).parent, flag)
            else:
                check()
        if not _creates_file(self.settings.tracking_uri):  # a copied work dir is refused
            self.tracker.check_artifacts(self.settings.workdir)

    # --- a sweep's start -------------------------------------------------------

    def set_up_schema(self, also: Callable[[], T]) -> T:
        """Bring our tables to head and run ``also`` (Optuna's own set-up) under one
        schema lock: concurrent drivers on one PostgreSQL create tables one at a time."""
        with self.store.schema_lock():
            self.store.migrate()
            return also()

    def take_lease(self, wait: bool = False, on_wait: Callable[[Holder], None] | None = None,
                   cancelled: Callable[[], bool] = lambda: False) -> None:
        """This driver's lease on the sweep (see ``lease``): before any other write
        to the sweep, after the schema exists."""
        lease = Lease(self.store, self.sweep)
        lease.acquire(wait=wait, on_wait=on_wait, cancelled=cancelled)
        self.lease = lease

    def lease_lost(self) -> str | None:
        """Who took the sweep over, if our heartbeat found it taken."""
        return None if self.lease is None else self.lease.lost

    def release_lease(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def open_sweep(self, spec: SweepSpec) -> int:
        """Record the sweep, once (a changed spec under the same name is refused); the
        experiment's tags link its studies (one experiment per sweep)."""
        self.spec = spec
        self.sweep_id = self.store.upsert_sweep(
            spec.name, spec.redacted(), spec.spec_hash(),
            {"commit": self.commit, **self.tags})
        self.tracker.set_experiment_tags({
            "varbench.sweep": spec.name, "varbench.spec_hash": spec.spec_hash(),
            "mlflow.note.content": f"varbench sweep {spec.name}: one parent run per study "
            f"(cell), one child run per trial. {NSTAR_NOTE}", **self.tags})
        return self.sweep_id

    def open_cell(self, study: str, variant: ModelVariant, target: str, lipschitz: float,
                  space: dict | None = None, setting: str | None = None,
                  steps: int | None = None) -> int:
        """The cell's row (with its training recipe) and its MLflow parent run: the cell,
        budget and search space as params, a description, the spec as YAML.
        ``setting``: a FlowAR study's own inference setting ("steps:solver"), which its
        row is labelled with; ``steps``: the cell's budget (one of ``budget.steps``)."""
        spec = self.spec
        steps = steps or spec.budget.step_list[0]
        label = setting_label(variant.label, setting) if setting else variant.label
        cell_id = self.store.upsert_cell(self.sweep_id, study, label, variant.family,
                                         target, lipschitz, cell_recipe(spec, steps))
        self._open_parent(cell_id, study, variant, target, lipschitz, space or {}, label,
                          setting, study, steps)
        parts = ([variant.label] if len(spec.cells.models) > 1 else []) + (
            [target] if len(spec.cells.targets) > 1 else [])
        self._names[study] = "".join(f"{p} · " for p in parts)  # unique names in the sweep
        return cell_id

    def open_setting_cells(self, cell_id: int, study: str, variant: ModelVariant, target: str,
                           lipschitz: float, settings: list[str],
                           space: dict | None = None,
                           steps: int | None = None) -> dict[str, tuple[int, str]]:
        """One more cell (row and parent run) per further inference setting of a FlowAR
        study (``sweeps.inference``): the study's trials scored at that setting.
        Returns setting -> (cell id, cell name)."""
        out = {}
        steps = steps or self.spec.budget.step_list[0]
        primary = next((c for c in self.store.cells(self.sweep_id) if c.id == cell_id), None)
        for key in settings:
            name = (setting_cell_name(self.sweep, variant.label, key, target, lipschitz)
                    + self.spec.budget.name_suffix(steps))  # as the study is named
            label = setting_label(variant.label, key)
            cid = self.store.upsert_cell(self.sweep_id, name, label, variant.family, target,
                                         lipschitz, cell_recipe(self.spec, steps))
            if primary is not None and primary.reference:  # a resume: the cell's own
                self.store.set_cell_fields(cid, reference=primary.reference)
            self._open_parent(cid, name, variant, target, lipschitz, space or {}, label, key,
                              study, steps)
            out[key] = (cid, name)
        self._settings[cell_id] = [(k, cid) for k, (cid, _) in out.items()]
        return out

    def _open_parent(self, cell_id: int, name: str, variant: ModelVariant, target: str,
                     lipschitz: float, space: dict, label: str, setting: str | None,
                     study: str, steps: int) -> None:
        spec = self.spec
        flow = {"varbench.flow_source": variant.flow_source, "varbench.optuna_study": study,
                **({"varbench.flow_setting": setting} if setting else {})
                } if variant.family == "flowar" else {}
        parent = self.tracker.parent_run(
            name,
            {"varbench.sweep": self.sweep, "varbench.cell": name, "git.commit": self.commit,
             "varbench.variant": label, "varbench.target": target,
             "varbench.lipschitz": f"{lipschitz:g}", "varbench.spec_hash": spec.spec_hash(),
             "mlflow.note.content": _parent_note(spec, variant, target, lipschitz, label,
                                                 setting, study if name != study else None,
                                                 steps),
             **flow, **source_tags(self.commit), **self.tags},
            name=f"{label} · {target} · L={lipschitz:g}",
            params=_parent_params(spec, variant, target, lipschitz, space, setting, steps))
        self._cells[cell_id] = (name, parent)
        self.tracker.log_text(parent, yaml.safe_dump(spec.model_dump(mode="json"),
                                                     sort_keys=False), "spec.yaml")

    def cells_without_reference(self) -> set[int]:
        return {row.id for row in self.store.cells(self.sweep_id) if not row.reference}

    def record_reference(self, cell_id: int, study: str, ref: dict) -> None:
        """The cell's reference errors, on its row and parent run, and on those of
        its other inference settings (the same cell, another way to run the model)."""
        metrics = {f"reference.{k}.err_ucb": v["err_ucb"] for k, v in ref.items()
                   if "err_ucb" in v}
        if "lipschitz" in ref:
            metrics["lipschitz_emp"] = ref["lipschitz"]["empirical"]
        for cid in (cell_id, *(c for _, c in self._settings.get(cell_id, []))):
            self.store.set_cell_fields(cid, reference=ref)
            self.tracker.log_parent_metrics(self._cells[cid][0] if cid in self._cells
                                            else study, metrics)

    # --- trials: lifecycle hooks ---------------------------------------------------

    def record_trial(self, cell_id: int, number: int, result: dict) -> bool:
        """The trial's row, once; False (and no write) if it is already there. A FlowAR
        trial's rows at its other inference settings go in the same transaction."""
        return self.store.record_trial(cell_id, number, result,
                                       also=self._setting_rows(cell_id, result))

    def _setting_rows(self, cell_id: int, result: dict) -> list[tuple[int, dict]]:
        rows = [(cid, setting_result(result, key)) for key, cid in self._settings.get(cell_id, [])]
        return [(cid, r) for cid, r in rows if r is not None]

    def fill_settings(self, cell_id: int) -> int:
        """Resume: a FlowAR study's recorded trials get the setting rows they lack (a
        store written before the settings existed); none is written twice."""
        if not self._settings.get(cell_id):
            return 0
        rows = [(cid, t.number, r, t.mlflow_run_id) for t in self.store.trials(cell_id)
                for cid, r in self._setting_rows(cell_id, t.result or {})]
        return self.store.fill_trials(rows) if rows else 0

    def start_trial(self, study: str, number: int, cfg: dict, space: dict) -> str:
        """The trial's child run, RUNNING from the moment it is handed to a worker:
        a readable name, the config as params, numeric search values as metrics."""
        name = (f"{self._names.get(study, '')}L={cfg.get('lipschitz', 0.0):g} · #{number} · "
                f"{_config_label(cfg, space)}")
        params = {k: v for k, v in cfg.items() if k != "eps"}
        params["eps_grid"] = ",".join(f"{e:g}" for e in cfg.get("eps", ()))
        metrics = {f"search.{k}": cfg[k] for k in space
                   if isinstance(cfg.get(k), (int, float)) and not isinstance(cfg.get(k), bool)}
        tags = {"varbench.sweep": self.sweep, "varbench.cell": study, "git.commit": self.commit,
                "varbench.status": "running", "varbench.db": mask_url(self.settings.db_url),
                **source_tags(self.commit), **self.tags}
        run_id = self.tracker.start_child(study, number, name, tags, params, metrics)
        self._open[(study, number)] = run_id
        return run_id

    def trial_result(self, cell_id: int, study: str, number: int, result: dict,
                     recovering: bool = False) -> str:
        """The trial's metrics and learning curves (with their steps, in one log_batch),
        ``curves.json``, then the run's end; the run id on the store row.

        ``recovering``: a row a dead driver left without its run gets the run it
        had (only linked, if that run was already ended), or a new one.
        """
        run_id = self._open.get((study, number))
        if run_id is None:
            run_id = self.tracker.find_trial_run(study, number)
            if run_id is not None and recovering:
                if self.tracker.client.get_run(run_id).info.status != "RUNNING":
                    self.store.set_trial_run_id(cell_id, number, run_id,  # only the link
                                                also=self._setting_ids(cell_id))  # was lost
                    return run_id
            if run_id is None:
                run_id = self.start_trial(study, number, result.get("config") or {}, {})
            self._open[(study, number)] = run_id
        metrics = [(k, result.get(k), 0) for k in TRIAL_METRICS]
        metrics += [(f"reached.{float(e):g}", float(ok), 0)
                    for e, ok in (result.get("reached") or {}).items()]
        metrics += _curve_metrics(result)
        metrics += _flow_metrics(result)
        tags = {"varbench.status": result.get("status", ""),
                "varbench.reason": result.get("reason", "")}
        if result.get("rungs"):  # multi-fidelity: where it paused and what was decided
            tags["varbench.rungs"] = " ".join(f"{r['step']}:{r['verdict']}"
                                              for r in result["rungs"])
        self.tracker.log(run_id, metrics=metrics, tags=tags)
        if result.get("curves"):
            self.tracker.log_dict(run_id, {"replicas": result["curves"],
                                           "replica_err_ucb": result.get("replica_err_ucb")},
                                  "curves.json")
        # a pruned trial ended as designed: FINISHED, its status tag says pruned
        self.end_trial(study, number, "FAILED" if result.get("status") == "failed"
                       else "FINISHED")
        self.store.set_trial_run_id(cell_id, number, run_id, also=self._setting_ids(cell_id))
        return run_id

    def _setting_ids(self, cell_id: int) -> list[int]:
        return [cid for _, cid in self._settings.get(cell_id, [])]

    def end_trial(self, study: str, number: int, status: str, reason: str = "") -> None:
        """End the trial's run now: FINISHED, FAILED or KILLED (``reason`` as a tag)."""
        run_id = self._open.pop((study, number), None) or self.tracker.find_trial_run(study, number)
        if run_id is None:
            return
        if reason:
            self.tracker.log(run_id, tags={"varbench.status": status.lower(),
                                           "varbench.reason": reason})
        self.tracker.end_run(run_id, status)

    def kill_open_trials(self, reason: str) -> None:
        """An interrupted sweep: every run still open ends KILLED."""
        for study, number in list(self._open):
            self.end_trial(study, number, "KILLED", reason)

    def close_interrupted(self, study: str, recorded: set[int]) -> int:
        """Resume: runs a dead driver left RUNNING for trials it never recorded end
        KILLED (their params run again as new trials). Returns how many."""
        closed = 0
        for run in self.tracker.child_runs(study, status="RUNNING"):
            key = run.data.tags.get(TRIAL_TAG, "")
            number = int(key.rsplit("#", 1)[1]) if "#" in key else None
            if number in recorded or (study, number) in self._open:
                continue
            self.tracker.log(run.info.run_id, tags={
                "varbench.status": "killed",
                "varbench.reason": "the driver stopped before the trial ended; "
                                   "its params were queued again"})
            self.tracker.end_run(run.info.run_id, "KILLED")
            closed += 1
        return closed

    def trials(self, cell_id: int) -> list[TrialRow]:
        return self.store.trials(cell_id)

    # --- checkpoints and convergence checks ------------------------------------------

    def _checkpoint_rel(self, study: str, number: int) -> Path:
        return Path("checkpoints") / _safe(self.sweep) / _safe(study) / f"{number}.pt"

    def save_checkpoint(self, study: str, number: int, blob: bytes) -> str:
        """A trial's final state as a file under the work directory (never in SQL):
        ``checkpoints/<sweep>/<study>/<number>.pt``, written whole (temp file, then
        rename). Returns the path relative to the work directory, which the stored
        result keeps."""
        rel = self._checkpoint_rel(study, number)
        path = self.settings.workdir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".pt.tmp")
        tmp.write_bytes(blob)
        tmp.replace(path)
        return str(rel)

    def load_checkpoint(self, rel: str | None) -> bytes | None:
        """A kept checkpoint's bytes (None when absent: recorded before checks, or removed)."""
        if not rel:
            return None
        path = self.settings.workdir / rel
        return path.read_bytes() if path.is_file() else None

    def drop_checkpoint(self, study: str, number: int) -> None:
        """Delete one trial's state file, if any (a rung's, once the trial has ended)."""
        (self.settings.workdir / self._checkpoint_rel(study, number)).unlink(missing_ok=True)

    def drop_checkpoints(self, study: str, keep: set[int]) -> int:
        """Delete the study's checkpoint files but those of ``keep`` (its N* trials);
        returns how many went. A trial that is not N* once its sweep has ended
        never becomes N* (later trials can only take a point over), so nothing
        will continue it; the stored result keeps the path, and
        ``load_checkpoint`` reads a removed one as absent."""
        folder = self.settings.workdir / "checkpoints" / _safe(self.sweep) / _safe(study)
        gone = 0
        for path in folder.glob("*.pt") if folder.is_dir() else ():
            if path.stem.isdigit() and int(path.stem) not in keep:
                path.unlink(missing_ok=True)
                gone += 1
        return gone

    def record_check(self, cell_id: int, kind: str, number: int, factor: int,
                     result: dict) -> bool:
        """A convergence-check trial, once (resume never redoes a recorded check)."""
        return self.store.record_check(cell_id, kind, number, factor, result)

    def checks(self, cell_id: int):
        return self.store.checks(cell_id)

    def set_verdicts(self, cell_id: int, verdicts: list[dict]) -> None:
        """The cell's verdict per ε in the store, and on its MLflow parent run: a
        ``varbench.verdict.eps_<ε>`` tag per point and counts as metrics."""
        self.store.replace_verdicts(cell_id, verdicts)
        if cell_id not in self._cells:
            return
        _, parent = self._cells[cell_id]
        tags = {f"varbench.verdict.eps_{v['eps']:g}": v["verdict"] for v in verdicts}
        counts = {f"check.{k.replace('-', '_')}": float(sum(v["verdict"] == k for v in verdicts))
                  for k in ("converged", "budget-limited", "unchecked")}
        metrics = [(k, v, 0) for k, v in counts.items()]
        metrics += [(f"check.continued_err_ucb.eps_{v['eps']:g}", v["continued_err_ucb"], 0)
                    for v in verdicts if v.get("continued_err_ucb") is not None]
        self.tracker.log(parent, metrics=metrics, tags=tags)

    def current_frontier(self, cell_id: int, eps: list[float]) -> list[FrontierPoint]:
        """The cell's frontier from its recorded trials, neither stored nor published."""
        return frontier(self.store.trial_points(cell_id), eps)

    def refresh_frontier(self, cell_id: int, eps: list[float]) -> list[FrontierPoint]:
        """The cell's frontier in the store and, when it moved, on its parent run:
        ``nstar.eps_<ε>`` metrics (step = completed trials) and the frontier table."""
        points = self.current_frontier(cell_id, eps)
        self.store.replace_frontier(cell_id, points)
        if cell_id in self._cells and self._last_front.get(cell_id) != points:
            self._last_front[cell_id] = points
            self._publish_frontier(cell_id, points)
        return points

    def _publish_frontier(self, cell_id: int, points: list[FrontierPoint]) -> None:
        from varbench.orchestrator.queries import frontier_rows
        from varbench.orchestrator.report import frontier_markdown

        study, parent = self._cells[cell_id]
        step = max((p.n_trials for p in points), default=0)
        metrics = [(f"nstar.eps_{p.eps:g}", p.n_star, step) for p in points if p.reached]
        best = next((p.best_err for p in points if p.best_err is not None), None)
        metrics += [("frontier.best_err_ucb", best, step),
                    ("frontier.eps_reached", sum(p.reached for p in points), step)]
        self.tracker.log(parent, metrics=metrics)
        rows = frontier_rows(self.store, self.sweep, cell_id=cell_id)
        self.tracker.log_dict(parent, rows, "frontier.json")
        self.tracker.log_text(parent, "\n".join([
            f"# Frontier N*(ε) of {study}", "", NSTAR_NOTE, "", *frontier_markdown(rows)]) + "\n",
            "frontier.md")

    def _publish_plots(self) -> None:
        """Each parent's err-vs-N plot (at a sweep's end: drawing is the slow part)."""
        from varbench.orchestrator.report import plot_err_vs_n

        cells = {c.id: c for c in self.store.cells(self.sweep_id)}
        for cell_id, (_, parent) in self._cells.items():
            trials = self.store.trials(cell_id)
            if cell_id not in cells or not trials:
                continue
            png = base64.b64decode(plot_err_vs_n([cells[cell_id]], {cell_id: trials},
                                                 self.spec.eps))
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "err_vs_n.png"
                path.write_bytes(png)
                self.tracker.client.log_artifact(parent, str(path))

    # --- a sweep's end, reports, nightly rows --------------------------------------

    def close_sweep(self, status: str, studies: list[str]) -> None:
        self.store.set_sweep_status(self.sweep_id, status)
        if status == "interrupted":  # quickly: the plots wait for the resumed sweep's end
            self.kill_open_trials("the sweep was interrupted")
            return
        self._publish_plots()
        if status == "completed":
            self.log_frontier_intervals()
            for study in dict.fromkeys([*studies, *(n for n, _ in self._cells.values())]):
                self.tracker.finish_parent(study)

    def log_frontier_intervals(self) -> None:
        """N*(ε) and its 95% interval (``frontier_intervals``) on each study's parent run."""
        eps = list(self.store.sweep(self.sweep).spec["eps"])
        for cell in self.store.cells(self.sweep_id):
            trials = self.store.trial_points(cell.id)
            iv = frontier_intervals(trials, eps)
            metrics, step = {}, 0
            for p in frontier(trials, eps):
                step = p.n_trials  # the step the nstar.eps_<ε> series is at (completed trials)
                if p.reached:
                    lo, hi = iv[p.eps]
                    metrics.update({f"nstar_lo.eps_{p.eps:g}": lo, f"nstar_hi.eps_{p.eps:g}": hi})
            if metrics:
                self.tracker.log_parent_metrics(cell.study_name, metrics, step=step)

    def attach_report(self, files: list[Path]) -> None:
        """The report's files on every study's parent run."""
        row = self.store.sweep(self.sweep)
        for cell in self.store.cells(row.id):
            for f in files:
                self.tracker.log_artifact(cell.study_name, f)

    def record_nightly(self, date: str, regression: bool, comparison: dict) -> None:
        row = self.store.sweep(self.sweep)
        self.store.add_nightly(row.id, date, self.commit, regression, comparison)


# --- payload shapes ------------------------------------------------------------------

def _config_label(cfg: dict, space: dict) -> str:
    """``d=8 K=2 bicubic``, plus every other searched value (``h=2``, ``lr=0.003``)."""
    short = {"heads": "h", "depth": "depth", "ffn_ratio": "r", "flow_steps": "steps", "lr": "lr"}
    out = [f"d={cfg.get('width')}", f"K={cfg.get('scales')}", str(cfg.get("interp"))]
    if cfg.get("flow_evals"):  # one training, scored at each inference setting
        out.append(f"flow@{','.join(cfg['flow_evals'])}")
    for k, label in short.items():
        if k in space or (k == "flow_steps" and cfg.get("model") == "flowar"
                          and not cfg.get("flow_evals")):
            v = cfg.get(k)
            out.append(f"{label}={v:.2g}" if isinstance(v, float) else f"{label}={v}")
    return " ".join(out)


def _curve_metrics(result: dict) -> list[tuple[str, float, int]]:
    """The learning curves as (key, value, step): ``loss``, ``monitor.err_ucb`` and
    ``lr`` of the reported (best) replica, and ``replica<i>.*`` of each where there
    are several."""
    curves = result.get("curves") or []
    errs = result.get("replica_err_ucb") or []
    done = [(e, i) for i, e in enumerate(errs) if e is not None]
    best = min(done)[1] if len(curves) > 1 and done else 0
    out = []
    for i, c in enumerate(curves):
        prefixes = ([""] if i == best else []) + ([f"replica{i}."] if len(curves) > 1 else [])
        for prefix in prefixes:
            for series, key in (("loss", "loss"), ("monitor_err_ucb", "monitor.err_ucb"),
                                ("lr", "lr")):
                out += [(prefix + key, v, step) for step, v in c.get(series, [])]
    return out


def _flow_metrics(result: dict) -> list[tuple[str, float, int]]:
    """A FlowAR trial at each inference setting: ``flow.<steps>_<solver>.err_ucb`` (and
    err, rel_err, flops), on the one run of its one training."""
    out = []
    for e in result.get("flow_evals") or []:
        prefix = f"flow.{e['flow_steps']}_{e['flow_solver']}."
        out += [(prefix + k, e.get(k), 0) for k in ("err", "err_ucb", "rel_err", "flops")]
    return out


def _safe(name: str) -> str:
    """A study or sweep name as one path component."""
    return "".join(ch if ch.isalnum() or ch in "._=-" else "_" for ch in name)


def cell_recipe(spec: SweepSpec, steps: int) -> dict:
    """The training recipe a cell's N* is conditional on: listed with every frontier."""
    from varbench.workers.training import SCHEDULE

    b = spec.budget
    return {"steps": steps, "batch_size": b.batch_size, "lr": b.lr,
            "lr_searched": spec.search.lr is not None, **spec.lr_choice(), "warmup": b.warmup,
            "schedule": SCHEDULE, "weight_decay": b.weight_decay, "grad_clip": b.grad_clip,
            "replicas": b.replicas}


def _parent_params(spec: SweepSpec, variant: ModelVariant, target: str, lipschitz: float,
                   space: dict, setting: str | None = None, steps: int | None = None) -> dict:
    """The study's cell, budget and search space, as flat params."""
    out = {"sweep": spec.name, "variant": variant.label, "family": variant.family,
           "target": target, "lipschitz": lipschitz,
           "eps_grid": ",".join(f"{e:g}" for e in spec.eps),
           "trials": spec.trials, "sampler": spec.sampler, "seed": spec.seed}
    out.update({f"cell.{k}": v for k, v in spec.cells.settings().items()})
    out.update({f"budget.{k}": v for k, v in
                spec.budget.for_steps(steps or spec.budget.step_list[0]).items()})
    out["budget.lr_choice"] = lr_text(spec.lr_choice() | {"lr": spec.budget.lr})
    out.update({f"variant.{k}": v for k, v in variant.model_dump().items() if k != "name"})
    out.update({f"search.{k}": _describe(d) for k, d in space.items()})
    if setting:
        out["flow_setting"] = setting
        out["flow_settings"] = ",".join(f"{k}:{s}" for k in spec.search.flow_steps
                                        for s in spec.search.flow_solvers)
    return out


def _describe(dist) -> str:
    """An Optuna distribution in a few words: ``int 4..16 log``, ``[bicubic, bilinear]``."""
    if hasattr(dist, "choices"):
        return "[" + ", ".join(str(c) for c in dist.choices) + "]"
    kind = "int" if type(dist).__name__.startswith("Int") else "float"
    return f"{kind} {dist.low:g}..{dist.high:g}" + (" log" if getattr(dist, "log", False) else "")


def _parent_note(spec: SweepSpec, variant: ModelVariant, target: str, lipschitz: float,
                 label: str | None = None, setting: str | None = None,
                 trained_in: str | None = None, steps: int | None = None) -> str:
    c, b = spec.cells, spec.budget
    flow = ""
    if setting:
        n_steps, solver = parse_key(setting)
        flow = (f"\n\nInference setting: {n_steps} {solver} step(s) per scale. Each FlowAR "
                "trial trains once and is scored at every setting of the spec; each "
                "setting is its own frontier. " + (
                    f"These trials are those of the study {trained_in}, scored at this "
                    "setting; their runs are that study's child runs." if trained_in else
                    "This is the study's own setting (the cheapest), which early stopping "
                    "monitors; its child runs carry every setting's metrics (flow.*)."))
    return (f"**{label or variant.label}** ({variant.family}) on the **{target}** target with "
            f"Lipschitz constant L = {lipschitz:g}: {c.channels} channel(s), "
            f"{c.s_first}×{c.s_first} → {c.s_last}×{c.s_last}, {c.inputs} inputs.\n\n"
            f"Budget per trial: {steps or b.step_list[0]} steps of {b.batch_size} fresh inputs, "
            f"{lr_text(spec.lr_choice() | {'lr': b.lr})} "
            f"(warm-up {b.warmup}, cosine decay), monitor every {b.eval_every} steps, final "
            f"err_p (p = {b.p:g}) on {b.n_eval} fresh inputs, {b.replicas} seed(s) per trial. "
            f"ε grid: {', '.join(f'{e:g}' for e in spec.eps)}; {spec.trials} trials, "
            f"{spec.sampler} sampler.\n\n{NSTAR_NOTE} Child runs: one per trial, with its "
            f"learning curves (loss, monitor.err_ucb, lr).{flow}")
