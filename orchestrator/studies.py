"""The Optuna side of a sweep: storage, one study per cell, ask / tell / requeue.

Each (model variant, target family, L) is one multi-objective study,
minimising (N, err_ucb), in the results database by default. Every call to
Optuna's storage goes through ``retry``: tells use ``skip_if_finished`` and
enqueues look first, so a call that committed before its connection died is
harmless to repeat.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import FrozenTrial, TrialState

from varbench.orchestrator.retry import retry
from varbench.sweeps.samplers import make_sampler
from varbench.sweeps.spec import ModelVariant, SweepSpec

DIRECTIONS = ["minimize", "minimize"]  # (N, err_ucb)
METRIC_NAMES = ["n_params", "err_ucb"]


def study_name(spec: SweepSpec, variant: ModelVariant, target: str, lipschitz: float,
               steps: int | None = None) -> str:
    """``<sweep>:<variant>:<target>:L=<L>``, and ``:steps=<S>`` when the spec lists
    several budgets (a single-budget spec keeps the names its sweeps resume by)."""
    return f"{spec.name}:{variant.label}:{target}:L={lipschitz:g}" + spec.budget.name_suffix(steps)


def optuna_storage(url: str) -> optuna.storages.RDBStorage:
    kwargs: dict = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30}
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


class Studies:
    """Open, ask, tell and settle the studies of one sweep."""

    def __init__(self, url: str):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.storage = retry(lambda: optuna_storage(url))

    def open(self, spec: SweepSpec, name: str, space: dict[str, BaseDistribution],
             attrs: dict | None = None, family: str = "var") -> optuna.Study:
        """The cell's study, with named objectives (dashboards show them) and ``attrs``
        (sweep, cell, ε grid, spec hash) as user attributes."""
        sampler = make_sampler(spec.sampler, spec.eps, space, seed=spec.seed, family=family)
        study = retry(lambda: optuna.create_study(
            storage=self.storage, study_name=name, sampler=sampler, directions=DIRECTIONS,
            load_if_exists=True))
        if study.metric_names != METRIC_NAMES:
            with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                retry(lambda: study.set_metric_names(METRIC_NAMES))
        for k, v in (attrs or {}).items():
            if study.user_attrs.get(k) != v:
                retry(lambda k=k, v=v: study.set_user_attr(k, v))
        return study

    def set_trial_attrs(self, trial: optuna.Trial, attrs: dict) -> None:
        """User attributes of a trial still running (MLflow run id, err, reason, ...)."""
        for k, v in attrs.items():
            retry(lambda k=k, v=v: trial.set_user_attr(k, v))

    def ask(self, study: optuna.Study, space: dict[str, BaseDistribution],
            ours: Callable[[], set[int]]) -> optuna.Trial:
        """study.ask, surviving a dropped connection.

        ask() creates the trial, then sets its params in further calls; when
        the connection drops in between, the half-made trial is failed (and,
        if it was a re-queued one, queued again) before asking anew. ``ours``
        gives the numbers this driver holds, which are never orphans.
        """
        return retry(lambda: study.ask(space),
                     on_retry=lambda: retry(lambda: self.fail_orphans(study, ours())))

    def tell(self, study: optuna.Study, number: int, status: str, n_params, err_ucb) -> None:
        """A completed trial's two objectives, PRUNED for a pruned one, FAIL otherwise."""
        if status == "completed" and err_ucb is not None and math.isfinite(err_ucb):
            retry(lambda: study.tell(number, [float(n_params), float(err_ucb)],
                                     skip_if_finished=True))
        elif status == "pruned":
            retry(lambda: study.tell(number, state=TrialState.PRUNED, skip_if_finished=True))
        else:
            retry(lambda: study.tell(number, state=TrialState.FAIL, skip_if_finished=True))

    def running(self, study: optuna.Study) -> list[FrozenTrial]:
        return retry(lambda: study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    def requeue(self, study: optuna.Study, number: int, params: dict) -> None:
        """Fail an interrupted trial and queue its params again (once)."""
        retry(lambda: study.tell(number, state=TrialState.FAIL, skip_if_finished=True))

        def enqueue() -> None:  # idempotent: a retried call must not queue it twice
            waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if not any(t.user_attrs.get("requeued_from") == number for t in waiting):
                study.enqueue_trial(params, user_attrs={"requeued_from": number})

        retry(enqueue)

    def fail_orphans(self, study: optuna.Study, ours: set[int]) -> None:
        """Fail RUNNING trials this driver does not hold (half-made by a dropped ask)."""
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.number in ours:
                continue
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            fixed = t.system_attrs.get("fixed_params")
            if fixed:
                study.enqueue_trial(dict(fixed), user_attrs=dict(t.user_attrs))


def dashboard_command(db_url: str, *, host: str, port: int) -> list[str]:
    """optuna-dashboard over the sweep's Optuna storage (the optional extra
    ``varbench[dashboard]``); refused in one line when it is not installed."""
    import os
    import shutil
    import sys

    from varbench.workers.errors import UserError

    exe = shutil.which("optuna-dashboard", path=os.path.dirname(sys.executable))
    if exe is None:
        raise UserError("dashboard", "optuna-dashboard is not installed; "
                        "pip install 'varbench[dashboard]'")
    return [exe, db_url, "--host", host, "--port", str(port), "--quiet"]
