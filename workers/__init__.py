"""Data plane: run trials from plain configs and return plain results.

Workers hold no connections and write nothing: the driver owns every write.
``run_trial`` loads on first use (PEP 562), so ``workers.config`` stays
importable without PyTorch (the CLI reads its defaults from it).
"""

from __future__ import annotations

import importlib

_HOME = {"TrialConfig": "config", "TrialResult": "config", "run_trial": "trial"}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
