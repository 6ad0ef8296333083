"""The peer: what a user would assemble without varbench, run back to back with it.

Ray Tune + OptunaSearch (multi-objective: minimise n_params and err_ucb) +
MLflowLoggerCallback, one model per Tune trial, each trial calling varbench's
own ``run_trial`` so the model, target, budget and error metric are identical.
One Tune run per cell (model variant, target, L), ``trials`` samples each, as
many at once as the spec's resources allow on this machine.

    .venv/bin/python -m benchmarks.peer [--spec sweeps/quick.yaml] [--only peer|varbench]

Prints, as JSON: each side's wall time (Ray start included), its trials' own
compute and steps, what its wall holds beyond that compute spread over its
slots (``overhead_s``), its frontier N*(ε) per cell, the ratio varbench /
peer, and whether varbench's frontier is
at least as small at every (cell, ε) (a point the peer did not reach counts
as infinitely large; one varbench did not reach and the peer did counts
against varbench).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
import zlib
from pathlib import Path

from varbench.sweeps.frontier import TrialPoint, frontier
from varbench.sweeps.space import search_space, trial_config, trial_seed
from varbench.sweeps.spec import SweepSpec, load_spec

ROOT = Path(__file__).resolve().parent.parent


def _nstar(points, eps) -> dict[str, float | None]:
    return {f"{p.eps:g}": (p.n_star if p.reached else None) for p in frontier(points, eps)}


def run_peer(spec: SweepSpec, work: Path) -> dict:
    """Tune + OptunaSearch + MLflowLoggerCallback over every cell of ``spec``."""
    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.search.optuna import OptunaSearch

    from varbench.orchestrator.cluster import connect
    from varbench.orchestrator.studies import study_name
    from varbench.workers.trial import run_trial

    t0 = time.perf_counter()
    connect(None)  # the same embedded, loopback-only cluster varbench uses
    cpus = int(ray.cluster_resources().get("CPU", 1))
    slots = max(1, int(cpus // spec.resources.cpus))  # trials at once, as varbench runs them
    out, compute, steps_run = {}, 0.0, 0
    for variant, target, lip, steps in spec.cell_keys():
        name = study_name(spec, variant, target, lip, steps)

        def trainable(params: dict, variant=variant, target=target, lip=lip, name=name,
                      steps=steps) -> dict:
            import torch

            torch.set_num_threads(1)
            # a seed from the params: Tune's trial ids are random, a rerun should not be
            number = zlib.crc32(json.dumps(params, sort_keys=True, default=str).encode())
            cfg = trial_config(spec, variant, target, lip, params, trial_seed(spec, name, number),
                               steps)
            res = run_trial(cfg)
            ok = res.status == "completed"
            return {"n_params": float(res.n_params), "err_ucb": res.err_ucb if ok else math.inf,
                    "status": res.status, "seconds": res.seconds, "steps_run": res.steps_run}

        search = OptunaSearch(space=search_space(spec, variant), metric=["n_params", "err_ucb"],
                              mode=["min", "min"], seed=spec.seed)
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": spec.resources.cpus}),
            tune_config=tune.TuneConfig(search_alg=search, num_samples=spec.trials,
                                        max_concurrent_trials=slots),
            run_config=tune.RunConfig(
                name=name.replace(":", "_").replace("=", ""), storage_path=str(work / "tune"),
                callbacks=[MLflowLoggerCallback(tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                                                experiment_name=f"peer/{spec.name}")],
                verbose=0),
        )
        grid = tuner.fit()
        points = [TrialPoint(i, int(r.metrics.get("n_params", 0)),
                             r.metrics.get("err_ucb") if math.isfinite(r.metrics.get("err_ucb", math.inf)) else None,
                             r.metrics.get("status", "failed"))
                  for i, r in enumerate(grid) if r.metrics]
        compute += sum(r.metrics.get("seconds", 0.0) for r in grid if r.metrics)
        steps_run += sum(int(r.metrics.get("steps_run", 0)) for r in grid if r.metrics)
        out[name] = {"nstar": _nstar(points, spec.eps),
                     "configs": len({tuple(sorted(r.config.items())) for r in grid}),
                     "trials": len(points)}
    return _timing(time.perf_counter() - t0, compute, steps_run, slots) | {"cells": out}


def _timing(wall: float, compute: float, steps_run: int, slots: int) -> dict:
    """Wall time beside what the trials themselves took: their compute (each trial's
    own seconds, summed), the steps they ran, and the rest of the wall once the
    compute is spread over the slots (Ray's start, set-up, per-trial overhead, idle
    slots, the close): what each side costs beyond training the same models."""
    return {"wall_s": wall, "compute_s": round(compute, 2), "steps_run": steps_run,
            "overhead_s": round(wall - compute / max(slots, 1), 2)}


def run_varbench(spec: SweepSpec, work: Path) -> dict:
    from varbench.orchestrator.cluster import capacity
    from varbench.orchestrator.driver import run_sweep
    from varbench.orchestrator.settings import resolve_settings
    from varbench.orchestrator.store import ResultsView
    from varbench.orchestrator.studies import study_name

    t0 = time.perf_counter()
    settings = resolve_settings(workdir=str(work))
    outcome = run_sweep(spec, settings)
    slots = capacity(spec.resources.cpus, spec.resources.gpus)
    # one training per trial: a FlowAR trial's rows in its other inference settings'
    # cells repeat its steps
    trained = {study_name(spec, *key) for key in spec.cell_keys()}
    view = ResultsView(settings.db_url)
    out, steps_run = {}, 0
    for cell in view.cells(view.sweep(spec.name).id):
        trials = view.trials(cell.id)
        out[cell.study_name] = {
            "nstar": _nstar(view.trial_points(cell.id), spec.eps),
            "configs": len({json.dumps({k: t.config.get(k) for k in ("width", "scales", "interp",
                                                                     "flow_steps", "lr")},
                                       sort_keys=True) for t in trials}),
            "trials": len(trials)}
        steps_run += sum(t.steps_run for t in trials) if cell.study_name in trained else 0
    # reading the frontier back counts, as the peer's counts building it from Tune's results
    return _timing(time.perf_counter() - t0, outcome.compute_seconds, steps_run,
                   slots) | {"cells": out}


def compare(peer: dict, ours: dict) -> dict:
    """Whether ours is at least as small at every (cell, ε), and where not."""
    worse = []
    for cell, theirs in peer["cells"].items():
        mine = ours["cells"].get(cell, {"nstar": {}})["nstar"]
        for e, n_peer in theirs["nstar"].items():
            n_ours = mine.get(e)
            if n_peer is not None and (n_ours is None or n_ours > n_peer):
                worse.append({"cell": cell, "eps": e, "peer": n_peer, "varbench": n_ours})
    return {"ratio": ours["wall_s"] / peer["wall_s"], "at_least_as_small": not worse,
            "worse_points": worse}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default=str(ROOT / "sweeps" / "quick.yaml"))
    ap.add_argument("--only", choices=("peer", "varbench"), default=None)
    ap.add_argument("--out", default=None, help="also write the JSON here (Tune prints to stdout)")
    args = ap.parse_args(argv)
    spec = load_spec(args.spec)
    spec = spec.model_copy(update={"name": f"{spec.name}-bench-{os.getpid()}"})
    result: dict = {"spec": args.spec}
    with tempfile.TemporaryDirectory(prefix="varbench-peer-") as tmp:
        if args.only != "varbench":
            result["peer"] = run_peer(spec, Path(tmp) / "peer")
            import ray

            ray.shutdown()  # each side starts its own cluster: Ray's start counts for both
        if args.only != "peer":
            result["varbench"] = run_varbench(spec, Path(tmp) / "varbench")
    if "peer" in result and "varbench" in result:
        result["comparison"] = compare(result["peer"], result["varbench"])
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
