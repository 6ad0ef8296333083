"""Errors the CLI maps to exit codes: UserError -> 2, RunFailed -> 1."""

from __future__ import annotations

from varbench.workers.errors import UserError


class RunFailed(Exception):
    """A run that started but could not finish (exit code 1)."""


__all__ = ["RunFailed", "UserError"]
