"""Model family registry: a name -> how to build it from plain settings.

Each family's module is an ``nn.Module`` with ``forward(x)`` (deterministic
inference, the map whose error is measured) and ``training_loss(x, y)``.
Adding a family is one builder and one name (here and in
``models.config.FAMILY_NAMES``, the torch-free list the CLI offers;
tests/test_lazy_cli.py checks they agree).
"""

from __future__ import annotations

from collections.abc import Callable

import torch.nn as nn

from varbench.models.flowar import FlowAR
from varbench.models.var import VAR, VARConfig

FAMILIES: dict[str, Callable[..., nn.Module]] = {}


def register_family(name: str):
    def deco(fn: Callable[..., nn.Module]):
        FAMILIES[name] = fn
        return fn

    return deco


@register_family("var")
def _build_var(cfg: VARConfig, **_: object) -> nn.Module:
    return VAR(cfg)


@register_family("flowar")
def _build_flowar(cfg: VARConfig, *, flow_steps: int, flow_solver: str, flow_source: str,
                  flow_sigma: float, flow_head: str, **_: object) -> nn.Module:
    return FlowAR(cfg, flow_steps=flow_steps, flow_solver=flow_solver, flow_source=flow_source,
                  flow_sigma=flow_sigma, flow_head=flow_head)


def build_model(family: str, cfg: VARConfig, **extra: object) -> nn.Module:
    if family not in FAMILIES:
        raise KeyError(f"unknown model family {family!r}; known: {sorted(FAMILIES)}")
    return FAMILIES[family](cfg, **extra)
