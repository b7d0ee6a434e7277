"""Checks of numeric command-line options shared by the commands: finite and on the right side of a bound."""
from __future__ import annotations

import math

from muxplan.files import InputError


def check_numbers(**named: tuple[float | None, float, bool]) -> None:
    """Each option: (value, bound, strict); must be finite and > bound (strict) or >= bound. None means not given."""
    problems = []
    for option, (value, bound, strict) in named.items():
        if value is None:
            continue
        ok = math.isfinite(value) and (value > bound if strict else value >= bound)
        if not ok:
            problems.append(f"--{option.replace('_', '-')}: must be a finite number {'>' if strict else '>='} {bound:g}, got {value}")
    if problems:
        raise InputError(problems)
