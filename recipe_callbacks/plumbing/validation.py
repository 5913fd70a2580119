"""Argument checks for callback constructors. Errors name the call, the argument and the value."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _fail(owner: str, name: str, value: Any, must: str, error: type[Exception] = ValueError) -> Exception:
    return error(f"{owner}({name}={value!r}): {name} must be {must}")


def check_int(owner: str, name: str, value: Any, *, minimum: int = 1) -> int:
    """An int (not a bool) no smaller than ``minimum``.

    Example:
        >>> check_int("InitLossCheck", "num_batches", 0)
        Traceback (most recent call last):
        ...
        ValueError: InitLossCheck(num_batches=0): num_batches must be an int >= 1
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(owner, name, value, f"an int >= {minimum}", TypeError)
    if value < minimum:
        raise _fail(owner, name, value, f"an int >= {minimum}")
    return value


def check_float(
    owner: str,
    name: str,
    value: Any,
    *,
    minimum: float = 0.0,
    maximum: float = float("inf"),
    inclusive_minimum: bool = False,
) -> float:
    """A real number in ``(minimum, maximum]`` (or ``[minimum, maximum]``).

    Example:
        >>> check_float("InitLossCheck", "tolerance", -1.0)
        Traceback (most recent call last):
        ...
        ValueError: InitLossCheck(tolerance=-1.0): tolerance must be a float in (0.0, inf]
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _fail(owner, name, value, "a float", TypeError)
    low_ok = value >= minimum if inclusive_minimum else value > minimum
    if not (low_ok and value <= maximum) or value != value:
        bracket = "[" if inclusive_minimum else "("
        raise _fail(owner, name, value, f"a float in {bracket}{minimum}, {maximum}]")
    return float(value)


def check_bool(owner: str, name: str, value: Any) -> bool:
    """A bool (not merely truthy).

    Example:
        >>> check_bool("InitLossCheck", "fix_bias", "yes")
        Traceback (most recent call last):
        ...
        TypeError: InitLossCheck(fix_bias='yes'): fix_bias must be a bool
    """
    if not isinstance(value, bool):
        raise _fail(owner, name, value, "a bool", TypeError)
    return value


def check_choice(owner: str, name: str, value: Any, choices: Sequence[Any]) -> Any:
    """One of ``choices``.

    Example:
        >>> check_choice("InitLossCheck", "on_fail", "explode", ("warn", "raise", "ignore"))
        Traceback (most recent call last):
        ...
        ValueError: InitLossCheck(on_fail='explode'): on_fail must be one of ('warn', 'raise', 'ignore')
    """
    if value not in tuple(choices):
        raise _fail(owner, name, value, f"one of {tuple(choices)}")
    return value


def check_optional_str(owner: str, name: str, value: Any) -> str | None:
    """``None`` or a non-empty string."""
    if value is not None and (not isinstance(value, str) or not value):
        raise _fail(owner, name, value, "None or a non-empty str", TypeError)
    return value


def check_indices(owner: str, name: str, value: Any) -> list[int] | None:
    """``None`` or a non-empty list (or tuple) of ints >= 0, as a list.

    Example:
        >>> check_indices("PredictionDynamicsLogger", "indices", (3, 1))
        [3, 1]
        >>> check_indices("PredictionDynamicsLogger", "indices", [])
        Traceback (most recent call last):
        ...
        TypeError: PredictionDynamicsLogger(indices=[]): indices must be None or a non-empty list of ints
    """
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not value:
        raise _fail(owner, name, value, "None or a non-empty list of ints", TypeError)
    return [check_int(owner, name, i, minimum=0) for i in value]
