"""Scale schedules: the sides s_1 < s_2 < ... < s_K of the VAR pyramid."""

from __future__ import annotations


def scale_schedule(s_first: int, s_last: int, k: int) -> list[int]:
    """Return K strictly increasing sides from ``s_first`` to ``s_last``.

    Sides are spaced geometrically (as VAR's patch_nums 1,2,3,4,5,6,8,...),
    rounded, and nudged so they stay strictly increasing. K = 1 is allowed
    only when the two ends coincide.
    """
    if s_first < 1 or s_last < s_first:
        raise ValueError(f"need 1 <= s_first <= s_last, got {s_first}, {s_last}")
    if k < 1:
        raise ValueError(f"scale count must be >= 1, got {k}")
    if k == 1:
        if s_first != s_last:
            raise ValueError("one scale needs s_first == s_last")
        return [s_first]
    if k > s_last - s_first + 1:
        raise ValueError(
            f"cannot fit {k} strictly increasing sides between {s_first} and {s_last}"
        )
    ratio = (s_last / s_first) ** (1.0 / (k - 1))
    sides = [s_first]
    for i in range(1, k - 1):
        want = round(s_first * ratio**i)
        # strictly above the previous side, and leave room for the rest
        lo = sides[-1] + 1
        hi = s_last - (k - 1 - i)
        sides.append(min(max(want, lo), hi))
    sides.append(s_last)
    return sides


def max_scales(s_first: int, s_last: int) -> int:
    """Largest K for which :func:`scale_schedule` exists."""
    return s_last - s_first + 1
