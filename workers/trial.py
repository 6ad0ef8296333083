"""Run one trial: build the model and target, train on fresh inputs, measure.

Fresh inputs every step (f is known, so there is no generalisation gap),
MSE/flow loss, AdamW with linear warm-up and cosine decay, gradient clipping,
early stop once a monitor batch shows the smallest ε of the grid reached. A
non-finite loss ends the trial as ``failed`` with that reason; it never
raises. Same config and seed give the same result on CPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import torch

from varbench.models.families import build_model
from varbench.models.inputs import sample_inputs
from varbench.models.metrics import ErrorEstimate, error_estimate, estimate_from_samples, per_sample_power
from varbench.models.targets import make_target
from varbench.workers.config import TrialConfig, TrialResult

# Disjoint random streams per trial seed: training, monitoring, final eval.
_STREAM = {"train": 1, "monitor": 2, "eval": 3}
MONITOR_SIZE = 512
EVAL_CHUNK = 1024


def _gen(seed: int, stream: str) -> torch.Generator:
    return torch.Generator().manual_seed(1_000_003 * seed + _STREAM[stream])


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@torch.no_grad()
def evaluate(predict, target, cfg: TrialConfig, device) -> ErrorEstimate:
    """err_p with its UCB on ``cfg.n_eval`` fresh inputs from the trial's eval stream.

    ``predict`` maps a batch of inputs to outputs (a model in eval mode, or
    one replica of a population), evaluated in chunks.
    """
    gen = _gen(cfg.seed, "eval")
    powers, sq, count = [], 0.0, 0
    for start in range(0, cfg.n_eval, EVAL_CHUNK):
        m = min(EVAL_CHUNK, cfg.n_eval - start)
        x = sample_inputs(cfg.inputs, m, cfg.channels, cfg.s_first, gen).to(device)
        y = target(x)
        powers.append(per_sample_power(predict(x), y, cfg.p).cpu())
        sq += float(y.double().pow(2).sum())
        count += y.numel()
    return estimate_from_samples(torch.cat(powers), math.sqrt(sq / count), cfg.p)


def replica_configs(cfg: TrialConfig) -> list[TrialConfig]:
    """The trial's replicas: seeds seed, seed + 1, ... (each alone a 1-replica trial)."""
    return [replace(cfg, seed=cfg.seed + k, replicas=1) for k in range(cfg.replicas)]


def run_trial(cfg: TrialConfig) -> TrialResult:
    """Train and evaluate one trial; never raises for numerical failure.

    With ``replicas`` > 1 the seeds train together (workers.population) and
    the result is the best replica's, with every replica's err_ucb beside it.
    """
    if cfg.replicas > 1:
        from varbench.workers.population import run_population

        results = run_population(replica_configs(cfg))
        done = [r for r in results if r.status == "completed"]
        best = min(done, key=lambda r: r.err_ucb) if done else results[0]
        best.replica_err_ucb = [r.err_ucb for r in results]
        best.seconds = sum(r.seconds for r in results)
        best.config = cfg.to_dict()
        return best
    return _train_one(cfg)


def _train_one(cfg: TrialConfig) -> TrialResult:
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.var_config(), flow_steps=cfg.flow_steps,
                        flow_solver=cfg.flow_solver).to(device)
    target = make_target(cfg.target, cfg.lipschitz, cfg.channels, cfg.s_first,
                         cfg.s_last, cfg.target_seed).to(device)
    n_params = model.num_params()
    result = TrialResult(
        status="completed",
        n_params=n_params,
        flops=model.flops_per_sample(),
        width=cfg.width,
        device=str(device),
        config=cfg.to_dict(),
    )
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, cfg.warmup, cfg.steps)
    )
    train_gen, mon_gen = _gen(cfg.seed, "train"), _gen(cfg.seed, "monitor")
    x_mon = sample_inputs(cfg.inputs, MONITOR_SIZE, cfg.channels, cfg.s_first, mon_gen).to(device)
    y_mon = target(x_mon)
    eps_min = min(cfg.eps)
    loss_val = float("nan")
    step = 0
    t_train = time.perf_counter()
    for step in range(1, cfg.steps + 1):
        x = sample_inputs(cfg.inputs, cfg.batch_size, cfg.channels, cfg.s_first, train_gen)
        x = x.to(device)
        loss = model.training_loss(x, target(x))
        loss_val = loss.item()
        if not math.isfinite(loss_val):
            result.status, result.reason = "failed", f"non-finite loss ({loss_val}) at step {step}"
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        sched.step()
        if step % cfg.eval_every == 0:
            model.eval()
            with torch.no_grad():
                mon = error_estimate(model(x_mon), y_mon, cfg.p)
            model.train()
            if mon.err_ucb <= eps_min:
                break
    result.steps_run = step
    result.sec_per_step = (time.perf_counter() - t_train) / max(step, 1)
    result.final_loss = loss_val if math.isfinite(loss_val) else None
    if result.status == "completed":
        model.eval()
        est = evaluate(model, target, cfg, device)
        if not math.isfinite(est.err_ucb):
            result.status, result.reason = "failed", "non-finite evaluation error"
        else:
            result.err, result.err_ucb, result.rel_err = est.err, est.err_ucb, est.rel_err
            result.reached = {repr(float(e)): est.err_ucb <= e for e in cfg.eps}
    result.seconds = time.perf_counter() - t0
    return result
