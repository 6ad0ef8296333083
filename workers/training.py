"""What every training loop shares: random streams, schedule, device, the
single-model loop, and the end of a trial (evaluate, finite check, ``reached``).

Fresh inputs every step (f is known, so there is no generalisation gap),
MSE/flow loss, AdamW with linear warm-up and cosine decay, gradient clipping,
early stop once a monitor batch shows the smallest ε of the grid reached. A
non-finite loss ends the trial as ``failed`` with that reason; it never
raises. Same config and seed give the same result on CPU.

Imports point down: trial -> population -> training -> models.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable

import torch
import torch.nn as nn

from varbench.models.families import build_model
from varbench.models.inputs import sample_inputs
from varbench.models.metrics import (
    ErrorEstimate,
    error_estimate,
    estimate_from_samples,
    per_sample_power,
)
from varbench.models.targets import Target, make_target
from varbench.workers.config import (
    Curve,
    TrialConfig,
    TrialResult,
    curve_every,
    parse_flow_eval,
)
from varbench.workers.engine import compiled, matmul_precision, resolve_step_mode
from varbench.workers.optim import FusedAdamW, clip_grad_norm_
from varbench.workers.stopping import StopRule

# Disjoint random streams per trial seed: training, monitoring, final eval.
_STREAM = {"train": 1, "monitor": 2, "eval": 3}
MONITOR_SIZE = 512
EVAL_CHUNK = 1024


def stream(seed: int, name: str) -> torch.Generator:
    """The trial's generator for one purpose ("train", "monitor" or "eval")."""
    return torch.Generator().manual_seed(1_000_003 * seed + _STREAM[name])


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


SCHEDULE = "warmup-cosine"  # the lr schedule's name, as results record it


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at ``total``.

    A trial continued past its budget (``train_one(resume=..)`` with more steps
    than it was planned with) re-stretches the cosine to the new total and
    resumes it at the step it stopped: it trains on with exactly the lr tail a
    fresh run at the larger budget has from that step, so a continued trial and
    a fresh one at the same budget end on the same annealing (the lr jumps back
    up once, to about half its peak at 2x; gradient clipping bounds that step).
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def recipe(cfg: TrialConfig, continued_from: int | None = None,
           planned_before: int | None = None) -> dict:
    """What a result is conditional on: the budget and how it was spent."""
    out = {"steps": cfg.steps, "batch_size": cfg.batch_size, "lr": cfg.lr,
           "lr_choice": cfg.lr_choice, "warmup": cfg.warmup, "schedule": SCHEDULE,
           "weight_decay": cfg.weight_decay, "grad_clip": cfg.grad_clip}
    if continued_from is not None:  # a continuation: the cosine re-stretched (lr_factor)
        out.update(continued_from=continued_from, planned_before=planned_before)
    return out


def build_target(cfg: TrialConfig, device: torch.device) -> Target:
    return make_target(cfg.target, cfg.lipschitz, cfg.channels, cfg.s_first, cfg.s_last,
                       cfg.target_seed).to(device)


def build(cfg: TrialConfig, device: torch.device) -> nn.Module:
    """The trial's model, initialised from its seed (as alone, so as in a population)."""
    torch.manual_seed(cfg.seed)
    return build_model(cfg.model, cfg.var_config(), **cfg.family_options()).to(device)


def param_count(cfg: TrialConfig) -> int:
    """N for a config without training it (the driver sizes bars with it): the model
    is built on the CPU (milliseconds; interpolation matrices are cached)."""
    return build_model(cfg.model, cfg.var_config(), **cfg.family_options()).num_params()


def monitor_batch(cfg: TrialConfig) -> torch.Tensor:
    """The fixed inputs whose error decides the early stop."""
    return sample_inputs(cfg.inputs, MONITOR_SIZE, cfg.channels, cfg.s_first,
                         stream(cfg.seed, "monitor"))


@torch.no_grad()
def evaluate(predict: Callable[[torch.Tensor], torch.Tensor], target, cfg: TrialConfig,
             device) -> ErrorEstimate:
    """err_p with its UCB on ``cfg.n_eval`` fresh inputs from the trial's eval stream.

    ``predict`` maps a batch of inputs to outputs (a model in eval mode, or
    one replica of a population), evaluated in chunks.
    """
    gen = stream(cfg.seed, "eval")
    powers, sq, count = [], 0.0, 0
    for start in range(0, cfg.n_eval, EVAL_CHUNK):
        m = min(EVAL_CHUNK, cfg.n_eval - start)
        x = sample_inputs(cfg.inputs, m, cfg.channels, cfg.s_first, gen).to(device)
        y = target(x)
        powers.append(per_sample_power(predict(x), y, cfg.p).cpu())
        sq += float(y.double().pow(2).sum())
        count += y.numel()
    return estimate_from_samples(torch.cat(powers), math.sqrt(sq / count), cfg.p)


def finish(result: TrialResult, predict: Callable[[torch.Tensor], torch.Tensor], target,
           cfg: TrialConfig, device) -> TrialResult:
    """The end of every trial: a completed one is evaluated, and fails if that is not finite."""
    if result.status != "completed":
        return result
    est = evaluate(predict, target, cfg, device)
    if not math.isfinite(est.err_ucb):
        result.status, result.reason = "failed", "non-finite evaluation error"
        return result
    result.err, result.err_ucb, result.rel_err = est.err, est.err_ucb, est.rel_err
    result.reached = {repr(float(e)): est.err_ucb <= e for e in cfg.eps}
    return result


Optimizer = torch.optim.Optimizer | FusedAdamW


def optimizer(model: nn.Module, lr: float | torch.Tensor, weight_decay: float, *,
              eager_cpu: bool, fused: bool) -> Optimizer:
    """The trial's AdamW: the fused kernel called directly for an eager CPU step
    (``workers.optim``: the same update, without torch.optim's per-step overhead or
    its TorchDynamo import), ``torch.optim.AdamW`` elsewhere."""
    if eager_cpu:
        return FusedAdamW(model.parameters(), lr=float(lr), weight_decay=weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused)


def set_lr(opt: Optimizer, lr: float) -> None:
    """The schedule's learning rate for the next update. A tensor lr (compiled steps)
    is filled in place, so the compiled optimizer sees no new constant."""
    for group in opt.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


def train_step(model: nn.Module, opt: Optimizer, x: torch.Tensor, y: torch.Tensor,
               grad_clip: float) -> torch.Tensor:
    """One update: forward, loss, backward, clipping, optimizer; returns the loss.

    The one step function of ``train_one``, run eager or through torch.compile
    (``workers.engine.compiled``), so both modes run the same step. The caller
    clears the gradients.
    """
    loss = model.training_loss(x, y)
    loss.backward()
    if grad_clip > 0 and isinstance(opt, FusedAdamW):  # eager CPU: one device and dtype
        clip_grad_norm_(opt.params, grad_clip)
    elif grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.detach()


def non_finite(loss: float, step: int) -> str:
    return f"non-finite loss ({loss}) at step {step}"


def train_one(cfg: TrialConfig, *, resume: bytes | None = None,
              pause_at: int | None = None) -> TrialResult:
    """One model, one seed: the plain loop every faster path must match.

    ``pause_at`` stops after that many steps of the ``cfg.steps`` schedule and
    returns ``paused`` with a checkpoint (model, optimizer, step, random streams,
    monitor history; the learning rate follows from the step) in
    ``result.checkpoint`` and the last monitor error, not evaluated further (a
    rung judges the monitor error; the full evaluation is the end's alone);
    ``resume`` continues from such a checkpoint. A run paused and resumed ends
    where the uninterrupted run ends (multi-fidelity continues trials this way).

    ``cfg.keep_checkpoint`` hands back the final state of a completed trial too
    (budget spent, or early stop). Resumed with a larger ``cfg.steps`` than it
    was planned with, a trial is *continued*: the cosine is re-stretched to the
    new total (``lr_factor``), its curves go on from the old ones (steps past
    the original budget), and ``result.recipe`` says where it was continued from.
    """
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    model = build(cfg, device)
    target = build_target(cfg, device)
    result = TrialResult(status="completed", n_params=model.num_params(),
                         n_params_eff=model.num_params_effective(), flops=model.flops_per_sample(), width=cfg.width, device=str(device),
                         config=cfg.to_dict())
    mode = resolve_step_mode(cfg.step_mode, device, cfg.model, cfg.width, cfg.steps)
    result.step_mode, result.matmul_precision = mode, cfg.matmul_precision
    # eager: one fused kernel for the whole update, on a GPU (launch-bound) and on the CPU
    # (0.08 against 0.42-0.47 ms per step at widths 4-32 for the per-parameter loop, timed
    # alone; a quick trial's whole step is 4-10 ms, benchmarks/step_cpu.py), on the CPU called
    # directly (workers.optim: 0.03 ms); compiled: the lr is a tensor, so the schedule does
    # not recompile the step
    lr = cfg.lr if mode == "eager" else torch.tensor(cfg.lr, device=device)
    opt = optimizer(model, lr, cfg.weight_decay, eager_cpu=mode == "eager"
                    and device.type == "cpu", fused=mode == "eager")
    step_fn = compiled(train_step, mode)
    train_gen = stream(cfg.seed, "train")
    x_mon = monitor_batch(cfg).to(device)
    y_mon = target(x_mon)
    eps_min = min(cfg.eps)
    rule = StopRule(cfg.bar, cfg.steps, cfg.eval_every)
    loss_val = float("nan")
    start, planned = 0, cfg.steps
    curve = Curve(every=curve_every(cfg.steps))  # a resumed run's goes on from the old one
    if resume is not None:
        start, loss_val, planned = _restore(resume, model, opt, train_gen, rule, curve, planned)
        # the lr follows from the step under this run's schedule (set_lr below): the same
        # value on an exact resume; on a continuation, the re-stretched cosine
    result.recipe = (recipe(cfg, start, planned) if planned != cfg.steps else recipe(cfg))
    step = start
    last = min(cfg.steps, pause_at) if pause_at is not None else cfg.steps
    t_train = time.perf_counter()
    paused = False
    with matmul_precision(cfg.matmul_precision):
        for step in range(start + 1, last + 1):
            x = sample_inputs(cfg.inputs, cfg.batch_size, cfg.channels, cfg.s_first, train_gen)
            x = x.to(device)
            factor = lr_factor(step - 1, cfg.warmup, cfg.steps)
            set_lr(opt, cfg.lr * factor)
            t_step = time.perf_counter()
            loss_val = step_fn(model, opt, x, target(x), cfg.grad_clip).item()
            opt.zero_grad(set_to_none=True)
            if step == start + 1 and mode != "eager":
                result.compile_seconds = time.perf_counter() - t_step
            if not math.isfinite(loss_val):  # the update already ran; the trial ends here
                result.status, result.reason = "failed", non_finite(loss_val, step)
                break
            curve.add_loss(step, loss_val, cfg.lr * factor)
            if step % cfg.eval_every == 0:
                model.eval()
                with torch.no_grad():
                    mon = error_estimate(model(x_mon), y_mon, cfg.p)
                model.train()
                curve.monitor_err_ucb.append((step, mon.err_ucb))
                result.monitor_err = mon.err_ucb
                if cfg.early_stop and mon.err_ucb <= eps_min:
                    break
                if rule.check(step, mon.err_ucb) and cfg.prune:
                    result.status, result.reason = "pruned", rule.reason
                    break
        else:  # the budget (or the pause) ran out without an early stop
            paused = step < cfg.steps
    if result.status == "completed" and (paused or cfg.keep_checkpoint):
        result.checkpoint = _snapshot(step, loss_val, model, opt, train_gen, rule,
                                      cfg.steps, curve)
    result.pruned_at = rule.fired_at
    curve.flush(step, cfg.lr * lr_factor(step - 1, cfg.warmup, cfg.steps))
    result.curves = [curve.to_dict()]
    result.steps_run = step
    train_s = time.perf_counter() - t_train - result.compile_seconds
    result.sec_per_step = train_s / max(step - start - (result.compile_seconds > 0), 1)
    result.final_loss = loss_val if math.isfinite(loss_val) else None
    result.paused = paused and result.status == "completed"
    model.eval()
    if not result.paused:
        with matmul_precision(cfg.matmul_precision):
            finish(result, model, target, cfg, device)
    if result.status == "completed" and not result.paused and cfg.flow_evals \
            and cfg.model == "flowar":
        result.flow_evals = evaluate_flow_settings(model, target, cfg, device, result)
    result.seconds = time.perf_counter() - t0
    return result


def _snapshot(step: int, loss: float, model, opt, gen: torch.Generator,
              rule: StopRule, planned: int, curve: Curve) -> bytes:
    """Everything a paused trial needs to go on exactly where it stopped (and its
    planned total and curves, so a continuation knows what it continues). The
    learning rate is not kept: it follows from the step (``set_lr``)."""
    buf = io.BytesIO()
    torch.save({"step": step, "loss": loss, "planned": planned,
                "curve": {**curve.to_dict(), "sum": curve._sum, "n": curve._n},
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "gen": gen.get_state(), "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                "monitor": list(rule.history), "fired_at": rule.fired_at,
                "reason": rule.reason}, buf)
    return buf.getvalue()


def _restore(blob: bytes, model, opt, gen: torch.Generator,
             rule: StopRule, curve: Curve, planned: int) -> tuple[int, float, int]:
    """Load a snapshot into a fresh trial; returns (step, last loss, planned total).
    A snapshot without its planned total (older ones) was planned as ``planned``."""
    state = torch.load(io.BytesIO(blob), weights_only=True)  # tensors and plain data only
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])  # the learning rate is set from the step (set_lr)
    gen.set_state(state["gen"])
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    rule.history = list(state["monitor"])
    rule.fired_at, rule.reason = state["fired_at"], state["reason"]
    old = state.get("curve")
    if old is not None:
        curve.loss = [tuple(p) for p in old["loss"]]
        curve.monitor_err_ucb = [tuple(p) for p in old["monitor_err_ucb"]]
        curve.lr = [tuple(p) for p in old["lr"]]
        curve._sum, curve._n = float(old["sum"]), int(old["n"])
    return int(state["step"]), float(state["loss"]), int(state.get("planned", planned))


def evaluate_flow_settings(model: nn.Module, target, cfg: TrialConfig, device,
                           own: TrialResult | None = None) -> list[dict]:
    """The trained FlowAR at each (steps, solver) of ``cfg.flow_evals``: inference-only
    settings, so no retraining; each with its own inference FLOPs. The model's own
    setting reuses ``own`` (the trial's evaluation): the same number, not a second draw
    of the same computation."""
    mine = (model.flow_steps, model.flow_solver)
    out = []
    try:
        for text in cfg.flow_evals:
            model.flow_steps, model.flow_solver = parse_flow_eval(text)
            if own is not None and (model.flow_steps, model.flow_solver) == mine:
                out.append({"flow_steps": model.flow_steps, "flow_solver": model.flow_solver,
                            "err": own.err, "err_ucb": own.err_ucb, "rel_err": own.rel_err,
                            "flops": own.flops, "reached": dict(own.reached)})
                continue
            est = evaluate(model, target, cfg, device)
            out.append({"flow_steps": model.flow_steps, "flow_solver": model.flow_solver,
                        "err": est.err, "err_ucb": est.err_ucb, "rel_err": est.rel_err,
                        "flops": model.flops_per_sample(),
                        "reached": {repr(float(e)): est.err_ucb <= e for e in cfg.eps}})
    finally:
        model.flow_steps, model.flow_solver = mine
    return out
