"""The recipe report as a person reads it on the console: status first, one line per verdict.

The lines fit the terminal (its width, or 120 columns when the output is not a terminal), the
advice follows only a ``WARN`` or ``FAIL``, colour is used only on a terminal, and steps with no
callback on the Trainer share one closing line. With `rich <https://github.com/Textualize/rich>`_
installed (the ``rich`` extra) the checklist is a rich table, as Lightning's ``RichModelSummary``
draws its summary; without it, plain text of the same layout. Either way the text goes out once
through Lightning's rank-zero logger, so ``logging.getLogger("lightning")`` levels silence it.
"""

from __future__ import annotations

import importlib.util
import io
import logging
import os
import shutil
import sys
import textwrap
from dataclasses import dataclass
from typing import IO

from recipe_callbacks.plumbing.finding import Finding

# (status word, ANSI colour) of each kind of row; pending/not run are not verdicts.
_WORD = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "SKIP", "pending": "WAIT"}
_ANSI = {"pass": "32", "warn": "33", "fail": "1;31", "skip": "2", "pending": "2"}
_RICH_STYLE = {"pass": "green", "warn": "yellow", "fail": "bold red", "skip": "dim", "pending": "dim"}
NOT_A_TERMINAL_WIDTH = 120


@dataclass(frozen=True)
class Row:
    """One line of the checklist: a Finding, or a callback on the Trainer without a verdict yet."""

    status: str  # "pass" | "warn" | "fail" | "skip" | "pending"
    step: str
    check: str
    summary: str
    advice: str = ""


@dataclass(frozen=True)
class Checklist:
    """The rows in recipe order, and the recipe steps that no callback on the Trainer covers."""

    rows: tuple[Row, ...]
    not_run: tuple[tuple[str, str], ...]  # (step, check)

    def tally(self) -> str:
        """``"1 fail, 2 warn, 8 pass, 1 skip, 2 waiting, 3 not run"``: the counts that are not zero, worst first."""
        parts = []
        for status in ("fail", "warn", "pass", "skip", "pending"):
            n = sum(r.status == status for r in self.rows)
            if n:
                parts.append(f"{n} {'waiting' if status == 'pending' else status}")
        if self.not_run:
            parts.append(f"{len(self.not_run)} not run")
        return ", ".join(parts) or "nothing to report"


def checklist(findings: list[Finding], present: set[str]) -> Checklist:
    """Findings in recipe order (unknown checks last); a ``pending`` row for a callback with no
    verdict yet, and ``not_run`` for every recipe step with no callback on the Trainer.

    Example:
        >>> c = checklist([Finding("InitLossCheck", "warn", "loss 4.1", advice="shrink")], {"InitLossCheck"})
        >>> c.rows[0]
        Row(status='warn', step='2d/2e', check='InitLossCheck', summary='loss 4.1', advice='shrink')
        >>> ("2a", "SeedEverything") in c.not_run
        True
    """
    from recipe_callbacks.recipe_report import RECIPE_STEPS

    by_check: dict[str, list[Finding]] = {}
    for f in findings:
        by_check.setdefault(f.check, []).append(f)
    rows: list[Row] = []
    not_run: list[tuple[str, str]] = []
    known: set[str] = set()
    for step, _title, checks in RECIPE_STEPS:
        for check in checks:
            known.add(check)
            if by_check.get(check):
                rows.extend(Row(f.status, step, check, _one_line(f.summary), _one_line(f.advice))
                            for f in by_check[check])
            elif check in present:
                rows.append(Row("pending", step, check, "on the Trainer, no verdict yet"))
            else:
                not_run.append((step, check))
    for check, extra in by_check.items():
        if check not in known:
            rows.extend(Row(f.status, "", check, _one_line(f.summary), _one_line(f.advice)) for f in extra)
    for check in sorted(present - known - set(by_check)):
        rows.append(Row("pending", "", check, "on the Trainer, no verdict yet"))
    return Checklist(tuple(rows), tuple(not_run))


def _one_line(text: str) -> str:
    return " ".join(text.split())


# ----------------------------------------------------------------------------- where it goes
def log_stream() -> IO[str] | None:
    """The stream Lightning's rank-zero messages end up on (the first stream handler up the
    logger tree), or ``None`` when they go to no stream."""
    from lightning_utilities.core import rank_zero

    logger: logging.Logger | None = rank_zero.log  # Lightning points it at its own logger on import
    while logger is not None:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                stream: IO[str] = handler.stream
                return stream
        logger = logger.parent if logger.propagate else None
    return sys.stderr if logging.lastResort is not None else None


def _is_terminal(stream: IO[str] | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # a closed or a stand-in stream
        return False


def console_settings(stream: IO[str] | None = None) -> tuple[int, bool]:
    """``(width, colour)`` for text written to ``stream`` (default: where Lightning's rank-zero
    logger writes): the terminal's width and colour on a terminal (colour off with ``NO_COLOR``);
    120 columns and no colour otherwise."""
    stream = log_stream() if stream is None else stream
    if not _is_terminal(stream):
        return NOT_A_TERMINAL_WIDTH, False
    width = shutil.get_terminal_size((NOT_A_TERMINAL_WIDTH, 24)).columns
    return max(40, width), "NO_COLOR" not in os.environ


def rich_available() -> bool:
    """True when the optional ``rich`` package is installed."""
    return importlib.util.find_spec("rich") is not None


# ----------------------------------------------------------------------------- rendering
def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def render_plain(checklist: Checklist, *, width: int = NOT_A_TERMINAL_WIDTH, colour: bool = False,
                 footer: str = "") -> str:
    """The checklist as plain text lines of at most ``width`` characters (ANSI colour codes, when
    ``colour`` is on, are not counted).

    Example:
        >>> c = checklist([Finding("InitLossCheck", "warn", "loss at init 4.1", advice="shrink it")], {"InitLossCheck"})
        >>> print(render_plain(c, width=60).splitlines()[2])
        WARN  2d/2e  InitLossCheck  loss at init 4.1
    """
    def paint(status: str, word: str) -> str:
        return f"\x1b[{_ANSI[status]}m{word}\x1b[0m" if colour else word

    step_w = max([len(r.step) for r in checklist.rows] + [4])
    check_w = max([len(r.check) for r in checklist.rows] + [5])
    lead = 4 + 2 + step_w + 2 + check_w + 2  # the summary starts here
    title = f"Recipe report: {checklist.tally()}"
    lines = [*textwrap.wrap(title, width=width), "─" * min(width, max(len(title), 40))]
    previous = ""
    for r in checklist.rows:
        step, check = ("", "") if r.check == previous else (r.step, r.check)
        previous = r.check
        head = f"{_WORD[r.status]:<4}  {step:<{step_w}}  {check:<{check_w}}  "
        summary = _fit(r.summary, max(10, width - lead))
        line = (head + summary).rstrip()
        if len(line) > width:  # a very narrow terminal: the check name itself is cut
            line = _fit(line, width)
        lines.append(paint(r.status, line[:4]) + line[4:])
        if r.advice and r.status in ("warn", "fail"):
            indent = " " * 6
            wrapped = textwrap.wrap(r.advice, width=max(20, width - len(indent) - 2), break_long_words=True)
            for i, part in enumerate(wrapped):
                lines.append(indent + ("↳ " if i == 0 else "  ") + part)
    if checklist.not_run:
        names = ", ".join(check for _, check in checklist.not_run)
        lines.extend(textwrap.wrap(f"Not on the Trainer: {names}.", width=width, subsequent_indent="  "))
    if footer:
        lines.extend(textwrap.wrap(footer, width=width, break_long_words=False, break_on_hyphens=False))
    return "\n".join(lines)


def render_rich(checklist: Checklist, *, width: int = NOT_A_TERMINAL_WIDTH, colour: bool = False,
                footer: str = "") -> str:
    """The checklist as a rich table (the look of Lightning's ``RichModelSummary``) rendered to
    text of ``width`` columns; needs the optional ``rich`` package."""
    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    buffer = io.StringIO()
    console = Console(
        file=buffer, width=width, force_terminal=colour, no_color=not colour,
        color_system="standard" if colour else None, highlight=False, soft_wrap=False,
    )
    table = Table(
        title=f"Recipe report: {checklist.tally()}", title_justify="left", header_style="bold magenta",
        box=box.SIMPLE_HEAD, expand=False, pad_edge=False, show_edge=False,
    )
    # fixed widths for the short columns: rich would otherwise shrink them before the summary
    step_w = max([len(r.step) for r in checklist.rows] + [4])
    check_w = min(max([len(r.check) for r in checklist.rows] + [5]), max(8, width - 6 - step_w - 8 - 16))
    table.add_column("Status", no_wrap=True, width=6)
    table.add_column("Step", no_wrap=True, width=step_w)
    table.add_column("Check", no_wrap=True, width=check_w, overflow="ellipsis")
    # every column is padded by one space each side; rich shrinks no-wrap columns evenly when the
    # table is too wide, so the summary gets exactly the width that is left
    summary_w = max(10, width - (6 + step_w + check_w) - 2 * 4)
    table.add_column("Summary", no_wrap=True, overflow="ellipsis", width=summary_w)
    previous = ""
    for r in checklist.rows:
        style = _RICH_STYLE[r.status]
        same = r.check == previous
        previous = r.check
        table.add_row(Text(_WORD[r.status], style=style), "" if same else r.step, "" if same else r.check, r.summary)
        if r.advice and r.status in ("warn", "fail"):
            table.add_row("", "", "", Text("↳ " + r.advice, style="italic", no_wrap=False, overflow="fold"))
    console.print(table)
    if checklist.not_run:
        names = ", ".join(check for _, check in checklist.not_run)
        console.print(Text(f"Not on the Trainer: {names}.", style="dim"))
    if footer:
        console.print(Text(footer), soft_wrap=False, overflow="fold")
    return "\n".join(line.rstrip() for line in buffer.getvalue().rstrip("\n").splitlines())


def render_console(findings: list[Finding], present: set[str], *, footer: str = "", width: int | None = None,
                   colour: bool | None = None, use_rich: bool | None = None) -> str:
    """The console checklist: rich when installed (or ``use_rich``), plain text otherwise; the
    width and colour of where Lightning's rank-zero messages go unless given."""
    auto_width, auto_colour = console_settings()
    width = auto_width if width is None else width
    colour = auto_colour if colour is None else colour
    rows = checklist(findings, present)
    if rich_available() if use_rich is None else use_rich:
        return render_rich(rows, width=width, colour=colour, footer=footer)
    return render_plain(rows, width=width, colour=colour, footer=footer)
