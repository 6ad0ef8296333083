"""One exception type for mistakes a user can fix.

It carries the field or address at fault; the CLI turns it into one line and
exit code 2. It lives at the bottom layer that validates input (workers), so
workers, sweeps and the orchestrator all raise the same type.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or an unreachable address, naming the field or address."""

    def __init__(self, where: str, problem: str):
        super().__init__(f"{where}: {problem}")
        self.where, self.problem = where, problem
