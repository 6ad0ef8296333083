"""Pure PyTorch models, targets and metrics for varbench.

Nothing here imports Ray, Optuna, MLflow, SQL or the rest of the project, so
a worker (or a notebook) can use it alone. The names below load on first use
(PEP 562), so importing a torch-free module such as ``models.config`` does not
load PyTorch.
"""

from __future__ import annotations

import importlib

_HOME = {
    "BACKENDS": "config", "VARConfig": "config",
    "attention": "attention", "block_causal_mask": "attention",
    "INTERPOLATIONS": "interp", "Interpolation": "interp", "interp_matrix": "interp",
    "scale_schedule": "schedule",
    "TARGETS": "targets", "Target": "targets", "make_target": "targets",
    "VAR": "var",
}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
