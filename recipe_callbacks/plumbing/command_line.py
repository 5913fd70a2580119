"""The ``recipe-callbacks`` command: read finished runs again, and compare runs (recipe steps 2a, 3b).

``recipe-callbacks report RUN`` prints the checklist of a run from its ``recipe_report.json``;
``recipe-callbacks compare RUN_A RUN_B [RUN_C ...]`` says whether runs are reproductions of each
other (fingerprints, training losses bit for bit, the first diverging step and why) and whether a
change helped (Findings whose status changed, the full-set validation figures with their
intervals, the hyperparameters that differ). Exit codes: 0 when the runs agree on what
``--expect`` asked, 1 when they do not, 2 for bad input (the message names the path).

Example::

    recipe-callbacks compare runs/seed0 runs/seed0_again --expect identical
    python -m recipe_callbacks compare runs/base runs/higher_lr --expect better --format md
"""

from __future__ import annotations

import argparse
import csv
import html
import json
import shutil
import sys
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recipe_callbacks.core.run_compare import Comparison, compare_runs
from recipe_callbacks.plumbing.console_report import render_console
from recipe_callbacks.plumbing.finding import Finding
from recipe_callbacks.plumbing.html_report import render_html
from recipe_callbacks.plumbing.run_record import RUN_FORMAT
from recipe_callbacks.recipe_report import render_markdown

REPORT_FILE = "recipe_report.json"
FORMATS = ("console", "md", "json", "html")
EXIT_OK, EXIT_DIFFER, EXIT_BAD_INPUT = 0, 1, 2


class RunError(Exception):
    """Bad input: the message names the path and what is wrong with it."""


@dataclass
class Run:
    """One run as the command reads it: its report file, the payload, and where it came from."""

    label: str
    path: Path
    payload: dict[str, Any]

    @property
    def record(self) -> dict[str, Any]:
        return dict(self.payload.get("run") or {})


# ----------------------------------------------------------------------------- reading runs
def find_report(path: Path) -> Path:
    """The ``recipe_report.json`` of a run: the file itself, the one in the directory, or the only
    one below it."""
    if not path.exists():
        raise RunError(f"{path}: no such file or directory")
    if path.is_file():
        return path
    direct = path / REPORT_FILE
    if direct.is_file():
        return direct
    found = sorted(path.rglob(REPORT_FILE))
    if not found:
        raise RunError(
            f"{path}: holds no run: no {REPORT_FILE} in it or below it (a run writes it when RecipeReport, "
            "which every preset adds, is on the Trainer)"
        )
    if len(found) > 1:
        listed = ", ".join(str(p.parent) for p in found[:5]) + (" ..." if len(found) > 5 else "")
        raise RunError(f"{path}: holds {len(found)} runs ({listed}); name one of them")
    return found[0]


def load_run(path: str, *, any_version: bool = False, need_record: bool = True) -> Run:
    """Read a run; raises :class:`RunError` naming the path when it is not a run this version reads."""
    from recipe_callbacks import __version__

    report = find_report(Path(path))
    try:
        payload = json.loads(report.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RunError(f"{report}: not a readable {REPORT_FILE}: {err}") from err
    if not isinstance(payload, dict) or not isinstance(payload.get("findings"), list):
        raise RunError(f"{report}: not a {REPORT_FILE} written by recipe_callbacks (no 'findings' list)")
    written_by = str(dict(payload.get("versions") or {}).get("recipe-callbacks", "unknown"))
    record = payload.get("run")
    if need_record and not isinstance(record, dict):
        raise RunError(
            f"{report}: written by recipe-callbacks {written_by}, which records no 'run' section (seed, "
            f"fingerprints, losses); this is recipe-callbacks {__version__}: train the run again with it"
        )
    if isinstance(record, dict) and record.get("format") != RUN_FORMAT:
        raise RunError(
            f"{report}: its 'run' section has format {record.get('format')!r}, this recipe-callbacks "
            f"{__version__} reads format {RUN_FORMAT}"
        )
    version = str(record.get("package_version", written_by)) if isinstance(record, dict) else written_by
    if need_record and not any_version and version != __version__:
        raise RunError(
            f"{report}: written by recipe-callbacks {version}, this is {__version__}; compare runs of one "
            "version, or pass --any-version to compare anyway"
        )
    return Run(path, report, payload)


def read_scalar(run: Run, tag: str) -> tuple[list[int], list[float]]:
    """The steps and values of a scalar the run's logger wrote: ``metrics.csv`` of a ``CSVLogger`` or
    the TensorBoard event files, in the report's directory."""
    directory = run.path.parent
    csv_file = directory / "metrics.csv"
    if csv_file.is_file():
        with csv_file.open(newline="", encoding="utf-8") as fh:
            rows = [row for row in csv.DictReader(fh) if row.get(tag) not in (None, "")]
        if rows:
            return [int(float(r.get("step") or i)) for i, r in enumerate(rows)], [float(r[tag]) for r in rows]
    if any(directory.glob("events.out.tfevents.*")):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(directory), size_guidance={"scalars": 0})
        events.Reload()
        if tag in events.Tags().get("scalars", []):
            scalars = events.Scalars(tag)
            return [int(e.step) for e in scalars], [float(e.value) for e in scalars]
    raise RunError(f"{directory}: no scalar {tag!r} in metrics.csv or in TensorBoard event files there")


# ----------------------------------------------------------------------------- tables
Table = tuple[str, list[str], list[list[str]]]


def _console_table(title: str, headers: list[str], rows: list[list[str]], width: int) -> str:
    """A plain-text table that fits ``width`` columns: the widest columns wrap first."""
    cols = len(headers)
    natural = [max([1, len(headers[i])] + [len(r[i]) for r in rows]) for i in range(cols)]
    widths = list(natural)
    budget = max(width - 3 * (cols - 1), 8 * cols)
    while sum(widths) > budget:
        widest = max(range(cols), key=lambda i: widths[i])
        if widths[widest] <= 8:
            break
        widths[widest] -= 1

    def line(cells: list[str]) -> list[str]:
        wrapped = [textwrap.wrap(c, widths[i]) or [""] for i, c in enumerate(cells)]
        height = max(len(w) for w in wrapped)
        return [
            " | ".join((w[k] if k < len(w) else "").ljust(widths[i]) for i, w in enumerate(wrapped)).rstrip()
            for k in range(height)
        ]

    titles = textwrap.wrap(title, width, break_on_hyphens=False) or [""]
    out = [*titles, "=" * min(max(len(t) for t in titles), width), *line(headers), "-+-".join("-" * w for w in widths)]
    for row in rows:
        out.extend(line(row))
    return "\n".join(out)


def _md_cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render_tables(tables: Sequence[Table], fmt: str, width: int) -> str:
    """The comparison's tables as console text, Markdown or an HTML page."""
    if fmt == "md":
        parts = []
        for title, headers, rows in tables:
            lines = [f"## {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            parts.append("\n".join(lines))
        return "\n\n".join(parts) + "\n"
    if fmt == "html":
        body = []
        for title, headers, rows in tables:
            head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
            cells = "".join(
                "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>\n" for row in rows
            )
            body.append(f"<h2>{html.escape(title)}</h2>\n<table>\n<tr>{head}</tr>\n{cells}</table>")
        style = "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px;text-align:left}"
        return (
            "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>recipe-callbacks compare</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
        )
    return "\n\n".join(_console_table(t, h, r, width) for t, h, r in tables) + "\n"


def _short(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


def pair_tables(c: Comparison) -> list[Table]:
    """The tables of one comparison of run B against run A."""
    fa, fb = c.fingerprints_a, c.fingerprints_b

    def same(a: Any, b: Any) -> str:
        if a is None or b is None or a == "" or b == "":
            return "not recorded"
        return "same" if a == b else "DIFFERENT"

    def _pair(a: dict[str, str], b: dict[str, str], key: str) -> list[str]:
        return [a.get(key, "—"), b.get(key, "—"), same(a.get(key), b.get(key))]

    repro = [
        ["seed", _short(c.seeds[0]), _short(c.seeds[1]), same(c.seeds[0], c.seeds[1])],
        ["deterministic algorithms", _short(c.deterministic[0]), _short(c.deterministic[1]), ""],
        ["weights fingerprint", *_pair(fa, fb, "weights")],
        ["first-batch fingerprint", *_pair(fa, fb, "batch")],
        [
            "training loss",
            f"{c.divergence.length_a} batches",
            f"{c.divergence.length_b} batches",
            c.divergence.text(),
        ],
        ["verdict", "", "", "IDENTICAL" if c.identical else "differ: " + ("; ".join(c.reasons) or "see above")],
    ]
    change = [[ch.check, ch.status_a.upper(), ch.status_b.upper(), ch.summary_b] for ch in c.changes]
    if not change:
        change = [["(no Finding changed status)", "", "", ""]]
    figures = [[f"{f.loader} {f.name}", f.a.text(), f.b.text(), f.text()] for f in c.figures]
    if not figures:
        figures = [["(no FullEvalSet figures in both runs)", "", "", "add recipe_callbacks.FullEvalSet"]]
    hparams = [[k, _short(a), _short(b), ""] for k, (a, b) in c.hparams.items()]
    if not hparams:
        hparams = [["(no hyperparameter differs)", "", "", ""]]
    return [
        (f"Reproducibility (recipe 2a): A = {c.run_a}, B = {c.run_b}", ["what", "A", "B", "verdict"], repro),
        ("Findings whose status changed (recipe 3b)", ["check", "A", "B", "summary in B"], change),
        ("Full-set validation figures, 95% intervals", ["figure", "A", "B", "B against A"], figures),
        ("Hyperparameters and settings that differ", ["name", "A", "B", ""], hparams),
    ]


def many_table(comparisons: Sequence[Comparison], metric: str | None) -> Table:
    """One row per run against the first."""
    mains = [c.main_figure(metric) for c in comparisons]
    named = next((m for m in mains if m is not None), None)
    figure = "figure" if named is None else f"{named.loader} {named.name}"
    first = "—" if named is None else named.a.text()
    rows = []
    for c, main in zip(comparisons, mains, strict=True):
        rows.append(
            [
                c.run_b,
                _short(c.seeds[1]),
                {True: "same", False: "DIFFERENT", None: "not recorded"}[c.fingerprints_equal],
                c.divergence.short(),
                str(len(c.changes)),
                "—" if main is None else main.b.text(),
                "—" if main is None else main.text(),
                ", ".join(c.hparams) or "—",
            ]
        )
    headers = ["run", "seed", "fingerprints", "training loss", "status changes", figure, "against first", "differs"]
    title = f"Runs against the first, {comparisons[0].run_a} (seed {_short(comparisons[0].seeds[0])}, {figure} {first})"
    return (title, headers, rows)


# ----------------------------------------------------------------------------- commands
def _width(args: argparse.Namespace) -> int:
    return int(args.width) if args.width else shutil.get_terminal_size((120, 24)).columns


def render_report(payload: dict[str, Any], fmt: str, width: int) -> str:
    """A run's checklist again, through the package's own report renderers (the ones RecipeReport uses)."""
    findings = [Finding.from_dict(f) for f in payload["findings"]]
    run = dict(payload.get("run") or {})
    present = set(run.get("callbacks") or [f.check for f in findings])
    if fmt == "json":
        return json.dumps(payload, indent=2)
    if fmt == "html":
        return render_html(findings, present, versions=payload.get("versions") or {})
    if fmt == "md":
        return render_markdown(findings, present)
    return render_console(findings, present, width=width)


def cmd_report(args: argparse.Namespace) -> int:
    run = load_run(args.run, need_record=False)
    print(render_report(run.payload, args.format, _width(args)))
    print(f"(from {run.path})", file=sys.stderr)
    return EXIT_OK


def cmd_compare(args: argparse.Namespace) -> int:
    runs = [load_run(p, any_version=args.any_version) for p in args.runs]
    if args.expect == "identical":
        for run in runs:
            if not run.record.get("fingerprints"):
                raise RunError(
                    f"{run.path}: the run recorded no fingerprints, so reproducibility cannot be judged: add "
                    "recipe_callbacks.SeedEverything (or the skeleton preset) to the Trainer"
                )
    first = runs[0]
    comparisons = []
    for run in runs[1:]:
        losses = None
        if args.loss_tag:
            losses = (read_scalar(first, args.loss_tag), read_scalar(run, args.loss_tag))
        comparisons.append(compare_runs(first.label, first.payload, run.label, run.payload, losses))
    met = True
    notes: list[str] = []
    for c in comparisons:
        if args.expect == "identical" and not c.identical:
            met = False
            notes.append(f"{c.run_b} is not identical to {c.run_a}: " + ("; ".join(c.reasons) or c.divergence.text()))
        if args.expect == "better":
            main = c.main_figure(args.metric)
            if main is None:
                missing = args.metric or "FullEvalSet figures"
                raise RunError(f"{c.run_b}: no {missing} in both this run and {c.run_a} to judge --expect better")
            if main.verdict != "better":
                met = False
                figure = f"{main.loader} {main.name} {main.b.text()} against {main.a.text()}"
                notes.append(f"{c.run_b}: {figure}: {main.text()}")
    if args.format == "json":
        payload = {
            "runs": [str(r.path) for r in runs],
            "expect": args.expect,
            "expectation_met": met if args.expect else None,
            "comparisons": [c.to_dict() for c in comparisons],
        }
        print(json.dumps(payload, indent=2, default=str))
    else:
        tables = pair_tables(comparisons[0]) if len(comparisons) == 1 else [many_table(comparisons, args.metric)]
        print(render_tables(tables, args.format, _width(args)), end="")
        if args.expect:
            verdict = "met" if met else "NOT met"
            print(f"\n--expect {args.expect}: {verdict}" + "".join(f"\n  {n}" for n in notes))
    return EXIT_OK if met else EXIT_DIFFER


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recipe-callbacks",
        description="Read the runs recipe_callbacks wrote: print a run's recipe report again, or compare runs.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    report = sub.add_parser("report", help="print the recipe report of a finished run")
    report.add_argument("run", help="a run's log dir (or its recipe_report.json)")
    report.add_argument("--format", choices=FORMATS, default="console")
    report.add_argument("--width", type=int, default=None, help="console width (default: the terminal's)")
    report.set_defaults(func=cmd_report)
    compare = sub.add_parser(
        "compare",
        help="compare runs: reproducibility (recipe 2a) and one change at a time (3b)",
        description="Compare RUN_B (and further runs) against RUN_A. Exit code 0 when --expect holds (or none "
        "is given), 1 when it does not, 2 for bad input.",
    )
    compare.add_argument("runs", nargs="+", metavar="RUN", help="two or more run log dirs; the first is the reference")
    compare.add_argument("--format", choices=FORMATS, default="console")
    compare.add_argument(
        "--expect",
        choices=("identical", "better"),
        default=None,
        help="identical: same fingerprints and training losses bit for bit; better: the main validation figure "
        "improved beyond the noise (intervals apart)",
    )
    compare.add_argument("--metric", default=None, help="the FullEvalSet figure --expect better judges (e.g. loss)")
    compare.add_argument(
        "--loss-tag", default=None, help="compare this logged scalar (TensorBoard or metrics.csv) as training loss"
    )
    compare.add_argument("--any-version", action="store_true", help="compare runs of other package versions")
    compare.add_argument("--width", type=int, default=None, help="console width (default: the terminal's)")
    compare.set_defaults(func=cmd_compare)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "compare" and len(args.runs) < 2:
        parser.error("compare needs at least two runs")
    try:
        code: int = args.func(args)
    except RunError as err:
        print(f"recipe-callbacks: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return code
