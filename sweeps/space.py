"""Search spaces: Optuna distributions per study, and trial params -> TrialConfig."""

from __future__ import annotations

import hashlib

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from varbench.sweeps.spec import ModelVariant, SweepSpec
from varbench.workers.config import TrialConfig


def search_space(spec: SweepSpec, variant: ModelVariant) -> dict[str, BaseDistribution]:
    """Distributions for one study: width, K, interpolation, and what the spec opens."""
    s = spec.search
    k_lo, k_hi = spec.scale_range()
    space: dict[str, BaseDistribution] = {
        "width": IntDistribution(s.width.low, s.width.high, log=s.width.log),
        "scales": IntDistribution(k_lo, k_hi),
        "interp": CategoricalDistribution(list(s.interp)),
    }
    if variant.family == "flowar":
        space["flow_steps"] = CategoricalDistribution(list(s.flow_steps))
    if s.lr is not None:
        space["lr"] = FloatDistribution(s.lr.low, s.lr.high, log=s.lr.log)
    for name in ("heads", "depth", "ffn_ratio"):
        value = getattr(variant, name)
        if isinstance(value, list):
            space[name] = CategoricalDistribution(list(value))
    return space


def trial_seed(spec: SweepSpec, study_name: str, number: int) -> int:
    """A stable per-trial seed from the sweep seed, the study and the trial number."""
    blob = f"{spec.seed}:{study_name}:{number}".encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little")


def trial_config(
    spec: SweepSpec,
    variant: ModelVariant,
    target: str,
    lipschitz: float,
    params: dict,
    seed: int,
) -> TrialConfig:
    """Turn sampled params into a full TrialConfig (width rounded to a multiple of heads)."""
    pick = lambda name: params.get(name, getattr(variant, name))  # noqa: E731
    heads = int(pick("heads"))
    width = max(heads, int(round(params["width"] / heads)) * heads)
    c, b = spec.cells, spec.budget
    return TrialConfig(
        model=variant.family,
        target=target,
        lipschitz=float(lipschitz),
        channels=c.channels,
        s_first=c.s_first,
        s_last=c.s_last,
        inputs=c.inputs,
        target_seed=c.target_seed,
        width=width,
        scales=int(params["scales"]),
        interp=str(params["interp"]),
        heads=heads,
        depth=int(pick("depth")),
        ffn_ratio=int(pick("ffn_ratio")),
        layernorm=variant.layernorm,
        flow_steps=int(params.get("flow_steps", 4)),
        steps=b.steps,
        batch_size=b.batch_size,
        lr=float(params.get("lr", b.lr)),
        warmup=b.warmup,
        weight_decay=b.weight_decay,
        grad_clip=b.grad_clip,
        eval_every=b.eval_every,
        n_eval=b.n_eval,
        p=float(b.p),
        eps=tuple(spec.eps),
        seed=seed,
        replicas=b.replicas,
    )

