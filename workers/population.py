"""Population training: R models of one shape trained at once.

Parameters are stacked on a leading dimension (``models.population``): linear
layers run as batched matmuls and attention folds the replicas into its batch,
so per-step framework overhead (autograd bookkeeping, the optimizer, clipping,
data generation) is paid once for R models. Each replica keeps its own seed (initialisation and
data stream), learning rate, gradient clipping, Adam state, early stop and
failure, so it ends exactly where training it alone would (up to float
rounding; see tests/test_population.py).

The step itself (forward, loss, backward, clipping, update) is one function,
``population_step``, run eager or compiled as the trial's ``step_mode`` says
(``workers.engine``).

Only small VAR models are batched this way (``batched``); FlowAR (its loss
draws random flow times inside the model) and larger models run their
replicas one after another, which is never slower than the plain loop.
"""

from __future__ import annotations

import math
import time
from dataclasses import fields

import torch

from varbench.models.inputs import sample_inputs
from varbench.models.metrics import error_estimate
from varbench.models.population import PopulationVAR
from varbench.models.var import var_params
from varbench.workers.config import Curve, TrialConfig, TrialResult, curve_every
from varbench.workers.engine import compiled, mark_static, matmul_precision, resolve_step_mode
from varbench.workers.stopping import StopRule
from varbench.workers.training import (
    MONITOR_SIZE,
    build,
    build_target,
    finish,
    lr_factor,
    monitor_batch,
    non_finite,
    recipe,
    resolve_device,
    stream,
    train_one,
)

# What may differ inside one population; every other field must be equal, so a
# new setting is kept apart by default.
PER_REPLICA = frozenset({"seed", "lr", "bar"})
SHAPE_FIELDS = tuple(f.name for f in fields(TrialConfig) if f.name not in PER_REPLICA)


def shape_key(cfg: TrialConfig) -> tuple:
    """Configs with equal keys can share one population (they differ in seed, lr, bar only)."""
    return tuple(getattr(cfg, f) for f in SHAPE_FIELDS)


# On CPU, batch replicas only while a model is small enough that per-step
# overhead dominates: measured on the 2-core CI machine (benchmarks/run.py),
# R = 8 batched replicas ran 1.6x the plain loop at width 8 but 0.7x at width
# 32, where the GEMMs are large enough to run well alone and batching adds
# copies. On a GPU every step is launch-bound (issue 11, H200: R = 32 stacked
# ran 361-663x the plain loop at widths 8-128), so replicas stack at every
# width that fits in memory.
BATCH_MAX_ACTIVATIONS = 16 * 64 * 84  # width x batch x tokens of a width-16 default trial
CPU_PACK = 4  # replicas per population on CPU (per worker call)
GPU_PACK = 64  # most replicas per population on a GPU
GPU_MEMORY_SHARE = 0.5  # of the free device memory a population may plan to use
ASSUMED_GPU_FREE = 24 << 30  # what the driver plans with; the worker splits to the real figure


def batched(cfg: TrialConfig, device_type: str = "cpu",
            max_activations: int = BATCH_MAX_ACTIVATIONS) -> bool:
    """Whether replicas of this config train faster stacked than one by one on a device."""
    if cfg.model != "var":
        return False
    if device_type == "cuda":
        return True
    return cfg.width * cfg.batch_size * cfg.var_config().n_tokens <= max_activations


def replica_bytes(cfg: TrialConfig) -> int:
    """Training memory of one replica (fp32), an upper estimate: weights, gradients
    and two Adam moments, plus the activations a step keeps for backward
    (projections, FFN, attention probabilities) and the batch itself."""
    vcfg = cfg.var_config()
    t, d = vcfg.n_tokens, cfg.width
    per_token = cfg.depth * (d * (8 + 2 * cfg.ffn_ratio) + 2 * cfg.heads * t) + 2 * d
    return 4 * (4 * var_params(vcfg) + cfg.batch_size * t * per_token)


def population_size(cfg: TrialConfig, device_type: str, free_bytes: int | None = None) -> int:
    """How many replicas of ``cfg`` one population trains at once on this device kind."""
    if not batched(cfg, device_type):
        return 1
    if device_type != "cuda":
        return CPU_PACK
    free = ASSUMED_GPU_FREE if free_bytes is None else free_bytes
    return max(1, min(GPU_PACK, int(GPU_MEMORY_SHARE * free) // replica_bytes(cfg)))


class StackedAdamW:
    """AdamW over stacked parameters with a learning rate per replica.

    Written out so that a replica can be frozen (early stop, failure) without
    touching its moments, and so that the update matches torch.optim.AdamW.
    """

    def __init__(self, params: dict[str, torch.Tensor], lrs: torch.Tensor, weight_decay: float,
                 betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.lrs, self.wd, self.betas, self.eps = params, lrs, weight_decay, betas, eps
        self.m = {k: torch.zeros_like(v) for k, v in params.items()}
        self.v = {k: torch.zeros_like(v) for k, v in params.items()}
        self.steps = torch.zeros_like(lrs)

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor], factor: float | torch.Tensor,
             active: torch.Tensor, *, all_active: bool | None = None) -> None:
        """One update of the active replicas; ``all_active`` (if the caller knows it)
        saves reading ``active`` back from the device."""
        if all_active if all_active is not None else bool(active.all()):
            return self._step_all(grads, factor)
        b1, b2 = self.betas
        self.steps += active.to(self.steps.dtype)
        bc1 = 1 - b1 ** self.steps.clamp_min(1)
        bc2 = 1 - b2 ** self.steps.clamp_min(1)
        lr = self.lrs * factor
        for k, p in self.params.items():
            shape = (-1,) + (1,) * (p.dim() - 1)
            act = active.view(shape)
            g = torch.where(act, grads[k], torch.zeros_like(grads[k]))
            m_new = self.m[k] * b1 + (1 - b1) * g
            v_new = self.v[k] * b2 + (1 - b2) * g * g
            self.m[k].copy_(torch.where(act, m_new, self.m[k]))  # in place: a compiled
            self.v[k].copy_(torch.where(act, v_new, self.v[k]))  # step keeps its buffers
            decayed = p * (1 - (lr * self.wd).view(shape))
            denom = (self.v[k].sqrt() / bc2.sqrt().view(shape)) + self.eps
            updated = decayed - (lr / bc1).view(shape) * self.m[k] / denom
            p.copy_(torch.where(act, updated, p))

    @torch.no_grad()
    def _step_all(self, grads: dict[str, torch.Tensor], factor: float | torch.Tensor) -> None:
        """Every replica active (the common case): in-place updates, no masking."""
        b1, b2 = self.betas
        self.steps += 1
        bc1 = 1 - b1 ** self.steps
        bc2_sqrt = (1 - b2 ** self.steps).sqrt()
        lr = self.lrs * factor
        step_size = lr / bc1
        for k, p in self.params.items():
            shape = (-1,) + (1,) * (p.dim() - 1)
            g, m, v = grads[k], self.m[k], self.v[k]
            m.mul_(b1).add_(g, alpha=1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            if self.wd:
                p.mul_((1 - lr * self.wd).view(shape))
            denom = (v.sqrt() / bc2_sqrt.view(shape)).add_(self.eps)
            p.sub_(m / denom * step_size.view(shape))


def _clip(grads: dict[str, torch.Tensor], max_norm: float) -> dict[str, torch.Tensor]:
    """Per-replica global-norm clipping, as clip_grad_norm_ does for one model."""
    sq = sum(g.reshape(g.shape[0], -1).pow(2).sum(1) for g in grads.values())
    coef = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
    for g in grads.values():
        g.mul_(coef.view((-1,) + (1,) * (g.dim() - 1)))
    return grads


def run_population(cfgs: list[TrialConfig],
                   max_activations: int = BATCH_MAX_ACTIVATIONS) -> list[TrialResult]:
    """Train replicas that share a shape together; one TrialResult per config, in order.

    ``max_activations`` is the size up to which stacking pays (``batched``);
    larger models train one after another.
    """
    if len({shape_key(c) for c in cfgs}) != 1:
        raise ValueError("a population needs configs that differ only in seed, lr and bar")
    c0 = cfgs[0]
    device = resolve_device(c0.device)
    if not batched(c0, device.type, max_activations) or len(cfgs) == 1:
        return [train_one(c) for c in cfgs]
    if device.type == "cuda":  # as many at once as the device's free memory allows
        size = population_size(c0, "cuda", torch.cuda.mem_get_info(device)[0])
        if len(cfgs) > size:
            return [r for k in range(0, len(cfgs), size)
                    for r in _train_stacked(cfgs[k:k + size], device)]
    return _train_stacked(cfgs, device)


def _train_stacked(cfgs: list[TrialConfig], device: torch.device) -> list[TrialResult]:
    """One population: R models of one shape, one step loop, at the trials' matmul
    precision (restored after, as ``train_one`` does)."""
    with matmul_precision(cfgs[0].matmul_precision):
        return _train_population(cfgs, device)


def _train_population(cfgs: list[TrialConfig], device: torch.device) -> list[TrialResult]:
    c0 = cfgs[0]
    t0 = time.perf_counter()
    models = [build(c, device) for c in cfgs]  # each initialised as it would be alone
    n_params, flops = models[0].num_params(), models[0].flops_per_sample()
    n_eff = models[0].num_params_effective()
    pop = PopulationVAR(models).to(device)
    del models
    params = dict(pop.named_parameters())
    target = build_target(c0, device)
    r = len(cfgs)
    opt = StackedAdamW(params, torch.tensor([c.lr for c in cfgs], device=device),
                       c0.weight_decay)
    gens = [stream(c.seed, "train") for c in cfgs]
    x_mon = torch.stack([monitor_batch(c) for c in cfgs]).to(device)
    y_mon = target(x_mon.flatten(0, 1)).unflatten(0, (r, MONITOR_SIZE))
    active = torch.ones(r, dtype=torch.bool, device=device)  # on the device, for the step
    alive = [True] * r  # the same, on the host: no device sync to read it
    steps_run = [0] * r
    status = ["completed"] * r
    reason = [""] * r
    last_loss = [math.nan] * r
    eps_min = min(c0.eps)
    rules = [StopRule(c.bar, c.steps, c.eval_every) for c in cfgs]
    monitor: list[float | None] = [None] * r
    curves = [Curve(every=curve_every(c0.steps)) for _ in cfgs]
    mode = resolve_step_mode(c0.step_mode, device, c0.model, c0.width, c0.steps)
    if mode == "graphs":  # the moments are updated in place: CUDA graphs keep their addresses
        mark_static([*opt.m.values(), *opt.v.values(), opt.steps, opt.lrs])
    step_fn = compiled(population_step, mode)
    factor = torch.zeros((), device=device)  # a tensor: the schedule recompiles nothing
    compile_seconds = 0.0
    t_train = time.perf_counter()
    for step in range(1, c0.steps + 1):
        x = torch.stack([sample(c0, g) for g in gens]).to(device)
        y = target(x.flatten(0, 1)).unflatten(0, (r, c0.batch_size))
        factor.fill_(lr_factor(step - 1, c0.warmup, c0.steps))
        t_step = time.perf_counter()
        losses = step_fn(pop, opt, x, y, active, factor, c0.grad_clip,
                         all(alive)).tolist()  # each replica's MSE
        if step == 1 and mode != "eager":
            compile_seconds = time.perf_counter() - t_step
        was = list(alive)
        for i in range(r):
            if not alive[i]:
                continue
            steps_run[i] = step
            last_loss[i] = losses[i]
            if not math.isfinite(losses[i]):
                status[i], reason[i] = "failed", non_finite(losses[i], step)
                alive[i] = False
            else:
                curves[i].add_loss(step, losses[i],
                                   cfgs[i].lr * lr_factor(step - 1, c0.warmup, c0.steps))
        if not any(alive):
            break
        if step % c0.eval_every == 0:
            with torch.no_grad():
                pred = pop(x_mon)
            for i in range(r):
                if not alive[i]:
                    continue
                monitor[i] = error_estimate(pred[i], y_mon[i], c0.p).err_ucb
                curves[i].monitor_err_ucb.append((step, monitor[i]))
                if c0.early_stop and monitor[i] <= eps_min:
                    alive[i] = False  # early stop, exactly as alone
                elif rules[i].check(step, monitor[i]) and cfgs[i].prune:
                    status[i], reason[i] = "pruned", rules[i].reason
                    alive[i] = False
            if not any(alive):
                break
        if alive != was:  # the device's copy, only when it changed
            active.copy_(torch.tensor(alive))
    train_seconds = time.perf_counter() - t_train - compile_seconds
    results = []
    for i, c in enumerate(cfgs):
        res = TrialResult(status=status[i], reason=reason[i], n_params=n_params,
                          n_params_eff=n_eff, flops=flops,
                          width=c.width, device=str(device), config=c.to_dict(), recipe=recipe(c), population=r,
                          steps_run=steps_run[i], monitor_err=monitor[i],
                          pruned_at=rules[i].fired_at,
                          final_loss=last_loss[i] if math.isfinite(last_loss[i]) else None)
        res.sec_per_step = train_seconds / max(sum(steps_run) - (compile_seconds > 0) * r, 1)
        res.step_mode, res.matmul_precision = mode, c0.matmul_precision
        res.compile_seconds = compile_seconds
        curves[i].flush(steps_run[i], c.lr * lr_factor(steps_run[i] - 1, c0.warmup, c0.steps))
        res.curves = [curves[i].to_dict()]
        finish(res, lambda z, i=i: _replica_forward(pop, z, i, r), target, c, device)
        res.seconds = (time.perf_counter() - t0) / r
        results.append(res)
    return results


def population_step(pop: PopulationVAR, opt: StackedAdamW, x: torch.Tensor, y: torch.Tensor,
                    active: torch.Tensor, factor: torch.Tensor, grad_clip: float,
                    all_active: bool) -> torch.Tensor:
    """One update of every active replica; returns each replica's loss, (R,).

    The one step of ``_train_stacked``, run eager or through torch.compile
    (``workers.engine.compiled``): ``all_active`` (the host's view, so the
    unmasked update needs no device sync) and ``factor`` (a tensor) keep the
    compiled graphs fixed across steps. A replica whose loss is not finite is
    masked out of the gradient sum and ends as failed; its own weights, which
    nobody evaluates, are updated only when every replica was active.
    """
    per_replica = (pop(x) - y).pow(2).flatten(1).mean(1)
    ok = active & torch.isfinite(per_replica)
    # replicas share no parameter: d(sum of losses)/dθ_i = d(loss_i)/dθ_i
    total = torch.where(ok, per_replica, torch.zeros_like(per_replica)).sum()
    grads = dict(zip(opt.params, torch.autograd.grad(total, list(opt.params.values()))))
    if grad_clip > 0:
        grads = _clip(grads, grad_clip)
    opt.step(grads, factor, ok, all_active=all_active)
    return per_replica.detach()


def sample(cfg: TrialConfig, gen: torch.Generator) -> torch.Tensor:
    return sample_inputs(cfg.inputs, cfg.batch_size, cfg.channels, cfg.s_first, gen)


def _replica_forward(pop: PopulationVAR, x: torch.Tensor, i: int, r: int) -> torch.Tensor:
    """Replica i's outputs: the population forward on x in slot i (others see zeros)."""
    xs = torch.zeros((r, *x.shape), dtype=x.dtype, device=x.device)
    xs[i] = x
    return pop(xs)[i]
