"""Argument types for the commands: a bad value stops argparse with one line naming the flag
(``detprune prune: error: argument --conf: 1.5 is not in [0, 1]``), before any work starts."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _number(text: str, kind: type) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _bounded(
    kind: type, low: float | None, high: float | None, low_open: bool = False, describe: str = ""
) -> Callable[[str], float | int]:
    def parse(text: str) -> float | int:
        value = _number(text, kind)
        too_low = low is not None and (value <= low if low_open else value < low)
        too_high = high is not None and value > high
        if too_low or too_high:
            raise argparse.ArgumentTypeError(f"{text} is not {describe}")
        return value

    parse.__name__ = describe  # argparse names the type in some messages
    return parse


positive_int = _bounded(int, 0, None, low_open=True, describe="a positive integer")
nonnegative_int = _bounded(int, 0, None, describe="an integer >= 0")
positive_float = _bounded(float, 0.0, None, low_open=True, describe="a number > 0")
nonnegative_float = _bounded(float, 0.0, None, describe="a number >= 0")
unit_float = _bounded(float, 0.0, 1.0, describe="in [0, 1]")
