"""AdamW for an eager CPU trial: PyTorch's fused AdamW kernel, called directly.

``torch.optim.AdamW(fused=True)`` runs one kernel per step, but around it the
``Optimizer`` machinery (hooks, profiling labels, grouping tensors by device)
costs more than the kernel at quick sizes (81-85 µs against 28 µs a step at
width 6, one thread), and its constructor imports TorchDynamo (``torch.optim``
wraps ``add_param_group`` in Dynamo's disable decorator): 0.86 s of a fresh
worker's CPU before its first trial, which a CPU trial never uses.

``FusedAdamW`` keeps what a trial needs: ``param_groups`` (the lr is set per
step, ``workers.training.set_lr``), ``step``, ``zero_grad`` and a state dict
in ``torch.optim``'s own format, so a checkpoint written by either loads into
the other. The update is the same kernel with the same arguments, so it is
bit-for-bit torch's (tests/test_optim.py). GPUs and compiled steps keep
``torch.optim.AdamW``.

``clip_grad_norm_`` is the same kind of shortcut for the clipping before it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class FusedAdamW:
    """One parameter group; amsgrad, maximize and grad scaling off (as a trial uses it)."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        self.params = list(params)
        # the keys torch.optim.AdamW(fused=True) keeps, so state dicts interchange
        self.param_groups = [{"lr": lr, "betas": betas, "eps": eps,
                              "weight_decay": weight_decay, "amsgrad": False,
                              "maximize": False, "foreach": None, "capturable": False,
                              "differentiable": False, "fused": True,
                              "decoupled_weight_decay": True}]
        self.state: dict[int, dict[str, torch.Tensor]] = {}

    def _state(self, i: int, p: torch.Tensor) -> dict[str, torch.Tensor]:
        s = self.state.get(i)
        if s is None:  # as torch.optim initialises it, at the first step with a gradient
            s = self.state[i] = {"step": torch.tensor(0.0, dtype=torch.float32),
                                 "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                 "exp_avg_sq": torch.zeros_like(
                                     p, memory_format=torch.preserve_format)}
        return s

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        live = [(i, p) for i, p in enumerate(self.params) if p.grad is not None]
        if not live:
            return
        states = [self._state(i, p) for i, p in live]
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)
        beta1, beta2 = group["betas"]
        torch._fused_adamw_([p for _, p in live], [p.grad for _, p in live],
                            [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                            [], steps, amsgrad=False, lr=group["lr"], beta1=beta1,
                            beta2=beta2, weight_decay=group["weight_decay"],
                            eps=group["eps"], maximize=False, grad_scale=None,
                            found_inf=None)

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def state_dict(self) -> dict:
        group = {**self.param_groups[0], "params": list(range(len(self.params)))}
        return {"state": {i: dict(s) for i, s in self.state.items()}, "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError("optimizer state does not match this model's parameters")
        order = groups[0]["params"]  # ids in the saved state, in parameter order
        self.param_groups[0].update({k: v for k, v in groups[0].items() if k != "params"})
        self.state = {}
        for i, (key, p) in enumerate(zip(order, self.params)):
            saved = state_dict["state"].get(key)
            if saved is not None:
                for k in ("exp_avg", "exp_avg_sq"):
                    if saved[k].shape != p.shape:
                        raise ValueError(f"optimizer state {k} of parameter {i} has shape "
                                         f"{tuple(saved[k].shape)}, not {tuple(p.shape)}")
                self.state[i] = {"step": saved["step"].to(torch.float32).clone(),
                                 "exp_avg": saved["exp_avg"].to(p).clone(),
                                 "exp_avg_sq": saved["exp_avg_sq"].to(p).clone()}


@torch.no_grad()
def clip_grad_norm_(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` (2-norm, foreach) for parameters on one device
    with one dtype, as an eager trial's are: the same operations in the same order,
    so the same gradients bit for bit, without the per-call grouping of tensors by
    device and dtype around them (64 against 179 µs at width 4, 15 parameters, one
    thread). Returns the total norm before clipping."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads, 2.0)), 2.0)
    torch._foreach_mul_(grads, torch.clamp(float(max_norm) / (total + 1e-6), max=1.0))
    return total
