"""Findings: the verdict every recipe check reports, and what ``on_fail`` does with it."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

Status = Literal["pass", "warn", "fail", "skip"]
OnFail = Literal["warn", "raise", "ignore"]
STATUSES: tuple[str, ...] = get_args(Status)
ON_FAIL_CHOICES: tuple[str, ...] = get_args(OnFail)


class RecipeWarning(UserWarning):
    """Warning category of every recipe check, so users can filter all of them at once.

    Example::

        import warnings
        warnings.filterwarnings("ignore", category=RecipeWarning)
    """


@dataclass(frozen=True)
class Finding:
    """One verdict of one check.

    Args:
        check: the class name of the callback that made it, e.g. ``"InitLossCheck"``.
        status: ``"pass"``, ``"warn"``, ``"fail"`` or ``"skip"``.
        summary: one sentence: what was measured and what was expected.
        values: the measured numbers, e.g. ``{"observed": 2.31, "expected": 2.30}``.
        advice: what to do next; empty when there is nothing to do.

    Example:
        >>> f = Finding("InitLossCheck", "pass", "loss at init 2.31, expected 2.30", {"observed": 2.31})
        >>> f.to_dict()["status"]
        'pass'
        >>> Finding.from_dict(f.to_dict()) == f
        True
    """

    check: str
    status: Status
    summary: str
    values: dict[str, float] = field(default_factory=dict)
    advice: str = ""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"Finding(status={self.status!r}): status must be one of {STATUSES}")
        clean = {str(k): float(v) for k, v in self.values.items()}
        object.__setattr__(self, "values", clean)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; non-finite values become ``None`` (JSON has no NaN)."""
        out = asdict(self)
        out["values"] = {k: (v if math.isfinite(v) else None) for k, v in self.values.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Finding:
        """Inverse of :meth:`to_dict`."""
        values = {k: (math.nan if v is None else float(v)) for k, v in dict(data.get("values", {})).items()}
        return cls(str(data["check"]), data["status"], str(data["summary"]), values, str(data.get("advice", "")))

    def message(self) -> str:
        """The text a warning or an error shows: check, status, summary and advice."""
        text = f"[{self.check}] {self.status.upper()}: {self.summary}"
        return f"{text} Advice: {self.advice}" if self.advice else text


class RecipeCheckError(RuntimeError):
    """Raised by a check with ``on_fail="raise"`` when it fails; carries the :class:`Finding`."""

    def __init__(self, finding: Finding) -> None:
        super().__init__(finding.message())
        self.finding = finding


def apply_on_fail(finding: Finding, on_fail: OnFail, *, warn: bool = True) -> None:
    """Act on a finding as ``on_fail`` says.

    A ``fail`` raises :class:`RecipeCheckError` under ``"raise"``; a ``fail`` or ``warn`` emits a
    :class:`RecipeWarning` under ``"warn"`` and ``"raise"`` (when ``warn`` is true, i.e. on the rank
    that speaks); ``"ignore"`` only records.

    Example:
        >>> apply_on_fail(Finding("X", "pass", "fine"), "raise")
        >>> apply_on_fail(Finding("X", "fail", "broken"), "ignore")
    """
    if on_fail == "ignore" or finding.status in ("pass", "skip"):
        return
    if finding.status == "fail" and on_fail == "raise":
        raise RecipeCheckError(finding)
    if warn:
        warnings.warn(finding.message(), RecipeWarning, stacklevel=3)


def format_value(value: float) -> str:
    """A measured number as a report shows it: integers without a point, others to 4 digits.

    Example:
        >>> [format_value(v) for v in (3.0, 0.000123456, 12345678.0, float("nan"))]
        ['3', '0.0001235', '12345678', 'nan']
    """
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def details_markdown(findings: list[Finding]) -> str:
    """The Findings of one check as Markdown: status and summary, the advice, a table of the values.

    This is where one-time values (seed, fingerprints, flags, counts, ``cost_steps``) are shown,
    instead of single-point scalar charts.

    Example:
        >>> print(details_markdown([Finding("X", "warn", "too high", {"ratio": 2.0}, "lower it")]))
        **WARN** too high
        <BLANKLINE>
        Advice: lower it
        <BLANKLINE>
        | quantity | value |
        |---|---|
        | ratio | 2 |
    """
    parts: list[str] = []
    for f in findings:
        parts.append(f"**{f.status.upper()}** {f.summary}")
        if f.advice:
            parts.append(f"Advice: {f.advice}")
        if f.values:
            rows = ["| quantity | value |", "|---|---|"] + [f"| {k} | {format_value(v)} |" for k, v in f.values.items()]
            parts.append("\n".join(rows))
    return "\n\n".join(parts)
