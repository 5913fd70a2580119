"""RecipeReport: one checklist of every recipe step, on the console, in TensorBoard and on disk."""

from __future__ import annotations

import json
import platform
import re
from collections.abc import Iterable
from importlib import metadata
from typing import TYPE_CHECKING, Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from recipe_callbacks.plumbing import log_writer
from recipe_callbacks.plumbing.callback_base import RecipeCallback
from recipe_callbacks.plumbing.console_report import render_console
from recipe_callbacks.plumbing.finding import Finding, details_markdown
from recipe_callbacks.plumbing.hook_dispatch import step_counter, switch_off, unused_hooks
from recipe_callbacks.plumbing.html_report import render_html
from recipe_callbacks.plumbing.run_record import RunRecord
from recipe_callbacks.plumbing.validation import check_bool

if TYPE_CHECKING:
    import lightning.pytorch as pl

# (step, what the recipe says, the callbacks that cover it) in the order of the recipe.
RECIPE_STEPS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("1", "Become one with the data", ("DataInspector", "LeakageCheck")),
    ("2a", "Fix random seed", ("SeedEverything", "DistributedConsistencyCheck")),
    ("2c", "Add significant digits to your eval", ("FullEvalSet",)),
    ("2c/2k", "An evaluation you can trust: a sane eval mode", ("EvalModeCheck",)),
    ("2d/2e", "Verify loss at init; init well", ("InitLossCheck",)),
    ("2d", "Verify loss: outputs, targets and loss fit together", ("LossCompatibilityCheck",)),
    ("2g", "Input-independent baseline", ("InputIndependentBaseline",)),
    ("2h", "Overfit one batch", ("OverfitOneBatch",)),
    ("2i", "Verify decreasing training loss", ("LossDecreaseCheck",)),
    ("2h/2i", "Is every layer learning? Gradient flow", ("GradientFlowCheck",)),
    ("2j", "Visualize just before the net", ("InputVisualizer",)),
    ("2k", "Visualize prediction dynamics", ("PredictionDynamicsLogger",)),
    ("2l", "Use backprop to chart dependencies", ("BatchIndependenceCheck", "CausalityCheck")),
    ("3a/3c", "Adam is safe; do not trust LR decay defaults", ("NoLRDecayWarning",)),
    ("4", "Regularize: look at the first-layer filters", ("FirstLayerFilterViz",)),
    ("+", "Update-to-weight ratios and activation health", ("UpdateRatioMonitor",)),
)
# characters of a summary in TensorBoard's table: short enough that the table fits a text card
# without squeezing the status and step columns letter by letter
_TABLE_SUMMARY = 64
_MARK = {"pass": "PASS", "warn": "WARN", "fail": "FAIL", "skip": "SKIP"}
_VERSIONED = ("recipe-callbacks", "lightning", "torch", "torchmetrics", "tensorboard")


def versions() -> dict[str, str]:
    """Versions of Python and the packages a report depends on."""
    out = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def render_markdown(findings: list[Finding], present: set[str]) -> str:
    """The checklist as a Markdown table: a row per Finding, in recipe order, and a ``not run``
    row for every step whose callback is not on the Trainer (or reported nothing).

    Example:
        >>> text = render_markdown([Finding("InitLossCheck", "pass", "ok")], {"InitLossCheck"})
        >>> "| 2d/2e | Verify loss at init; init well | InitLossCheck | PASS | ok |" in text
        True
        >>> "| 2a | Fix random seed | SeedEverything | not run |" in text
        True
    """
    rows = ["| Step | Recipe | Check | Status | Summary | Advice |", "|---|---|---|---|---|---|"]
    by_check: dict[str, list[Finding]] = {}
    for f in findings:
        by_check.setdefault(f.check, []).append(f)
    known = {c for _, _, checks in RECIPE_STEPS for c in checks}
    for step, title, checks in RECIPE_STEPS:
        for check in checks:
            if by_check.get(check):
                for f in by_check[check]:
                    rows.append(
                        f"| {step} | {title} | {check} | {_MARK[f.status]} | {_cell(f.summary)} | {_cell(f.advice)} |"
                    )
            else:
                if check in present:
                    rows.append(f"| {step} | {title} | {check} | pending | on the Trainer, no verdict yet | |")
                else:
                    rows.append(f"| {step} | {title} | {check} | not run | | add recipe_callbacks.{check} |")
    for check, extra in by_check.items():
        if check not in known:
            for f in extra:
                rows.append(f"| | | {check} | {_MARK[f.status]} | {_cell(f.summary)} | {_cell(f.advice)} |")
    counts = {s: sum(f.status == s for f in findings) for s in _MARK}
    tally = ", ".join(f"{n} {s}" for s, n in counts.items())
    return "## Recipe report\n\n" + "\n".join(rows) + f"\n\n{tally}.\n"


def one_line(text: str, width: int = 100) -> str:
    """The first sentence of ``text``, cut to ``width`` characters: a summary that fits one table row.

    Example:
        >>> one_line("loss at init 2.31, expected 2.30. The model predicts as if it did not know.")
        'loss at init 2.31, expected 2.30.'
        >>> one_line("x" * 120, width=10)
        'xxxxxxxxx…'
    """
    flat = " ".join(text.split())
    first = re.split(r"(?<=[.;])\s", flat, maxsplit=1)[0]
    return first if len(first) <= width else first[: width - 1].rstrip() + "…"


def render_tensorboard_text(findings: list[Finding], present: set[str]) -> str:
    """The checklist for TensorBoard's text tab: a short table (status, step, check, one-line
    summary), problems first, then the details of each check (summary, advice, values) below it.

    Example:
        >>> text = render_tensorboard_text([Finding("InitLossCheck", "warn", "too high. More.", {"ratio": 2.0})],
        ...                                {"InitLossCheck"})
        >>> "| WARN | 2d/2e | InitLossCheck | too high. |" in text
        True
        >>> "| ratio | 2 |" in text and "not run" in text
        True
    """
    order = {"fail": 0, "warn": 1, "pass": 2, "skip": 3, "pending": 4, "not run": 5}
    step_of = {check: step for step, _, checks in RECIPE_STEPS for check in checks}
    rows: list[tuple[str, str, str, str]] = []
    by_check: dict[str, list[Finding]] = {}
    for f in findings:
        by_check.setdefault(f.check, []).append(f)
        rows.append((f.status, step_of.get(f.check, ""), f.check, one_line(f.summary, _TABLE_SUMMARY)))
    for step, _, checks in RECIPE_STEPS:
        for check in checks:
            if check not in by_check:
                rows.append(("pending", step, check, "on the Trainer, no verdict yet") if check in present
                            else ("not run", step, check, f"add recipe_callbacks.{check}"))
    rows.sort(key=lambda r: order[r[0]])
    counts = ", ".join(f"{sum(f.status == s for f in findings)} {s}" for s in _MARK)
    table = ["| Status | Step | Check | Summary |", "|---|---|---|---|"]
    table += [f"| {_MARK.get(st, st)} | {step} | {check} | {_cell(summary)} |" for st, step, check, summary in rows]
    details = [f"### {check}\n\n{details_markdown(items)}" for check, items in by_check.items()]
    return "## Recipe report\n\n" + f"{counts}.\n\n" + "\n".join(table) + "\n\n" + "\n\n".join(details) + "\n"


def custom_scalars_layout(tags: Iterable[str]) -> dict[str, dict[str, list[Any]]]:
    """A TensorBoard Custom Scalars layout: a category per check, a chart per quantity family.

    A family is the last part of a tag without a trailing index (``net.0/log10_ratio`` and
    ``net.2/log10_ratio`` are one family, ``lr_group_0`` and ``lr_group_1`` another), so a chart
    never mixes units.

    Example:
        >>> layout = custom_scalars_layout(["recipe.full_eval_set/loss", "recipe.full_eval_set/test/loss",
        ...                                 "recipe.full_eval_set/accuracy", "other/x"])
        >>> sorted(layout["recipe.full_eval_set"])
        ['accuracy', 'loss']
        >>> kind, tags = layout["recipe.full_eval_set"]["loss"]
        >>> print(kind, *tags)
        Multiline ^recipe\\.full_eval_set/loss$ ^recipe\\.full_eval_set/test/loss$
        >>> list(layout)
        ['recipe.full_eval_set']
    """
    families: dict[str, dict[str, list[str]]] = {}
    for tag in sorted(set(tags)):
        prefix, _, quantity = tag.partition("/")
        if not prefix.startswith("recipe.") or not quantity:
            continue
        family = re.sub(r"_\d+$", "", quantity.rsplit("/", 1)[-1])
        families.setdefault(prefix, {}).setdefault(family, []).append(f"^{re.escape(tag)}$")
    return {
        prefix: {family: ["Multiline", members] for family, members in sorted(charts.items())}
        for prefix, charts in sorted(families.items())
    }


class RecipeReport(Callback):
    """Gathers the Findings of every recipe callback on the Trainer into one checklist.

    Prints the checklist on rank 0 once the early (one-off) checks have all reported, again at the
    end of fit, and after ``trainer.validate`` / ``trainer.test`` (a checklist the console already
    shows is not printed again). Each time it also writes it to TensorBoard text and
    ``recipe_report.html``, ``recipe_report.md`` and ``recipe_report.json`` to every logger's own
    place (``trainer.log_dir`` for TensorBoard/CSV, the W&B run's files, the MLflow run's
    artifacts, ``trainer.default_root_dir`` without a logger).

    Args:
        print_report: print the checklist to the console (through Lightning's rank-zero logger).

    Logged:
        - ``recipe/report``: the checklist as TensorBoard text: a short table (status, step, check,
          one-line summary), problems first, and the details of each check below it.
        - a Custom Scalars layout with a category per check and a chart per quantity family (written
          with the report, whenever new scalar tags appeared).
        - ``recipe_report.html`` (self-contained: the checklist with each check's pictures, numbers
          and advice), ``recipe_report.md``, ``recipe_report.json``
          (``{"findings": [...], "versions": {...}, "run": {...}}``).
        - ``recipe/report_html``: the HTML page on a W&B run.

    Example::

        trainer = Trainer(callbacks=[InitLossCheck(), RecipeReport()])
    """

    def __init__(self, print_report: bool = True) -> None:
        self.print_report = check_bool("RecipeReport", "print_report", print_report)
        self._early_printed = False
        self._early_due = False
        self._rank_zero, self._counter = True, None  # set at fit start
        self._layout_tags: set[str] = set()
        self.last_markdown = ""
        self.run_record = RunRecord()
        self._printed_markdown = ""
        switch_off(self, unused_hooks(type(self)))  # Lightning does not call the hooks it has nothing in

    @staticmethod
    def recipe_callbacks(trainer: pl.Trainer) -> list[RecipeCallback]:
        return [cb for cb in trainer.callbacks if isinstance(cb, RecipeCallback)]  # type: ignore[attr-defined]

    def findings(self, trainer: pl.Trainer) -> list[Finding]:
        """Every current Finding of the recipe callbacks on the Trainer."""
        return [f for cb in self.recipe_callbacks(trainer) for f in cb.findings]

    def write(self, trainer: pl.Trainer) -> str:
        """Render the checklist and write it everywhere; returns the Markdown."""
        callbacks = self.recipe_callbacks(trainer)
        findings = [f for cb in callbacks for f in cb.findings]
        present = {cb.check_name for cb in callbacks}
        text = render_markdown(findings, present)
        self.last_markdown = text
        if not trainer.is_global_zero:
            return text
        places = self._write_files(trainer, text, findings, present)
        self._write_tensorboard(trainer, findings, present)
        if self.print_report and text != self._printed_markdown:
            # a checklist already on the console is not printed again (e.g. the early one at the
            # end of a one-epoch fit, right before the end-of-fit one)
            self._printed_markdown = text
            self._print_console(findings, present, places)
        return text

    def _write_files(self, trainer: pl.Trainer, text: str, findings: list[Finding], present: set[str]) -> list[str]:
        """``recipe_report.md/.json/.html`` into every logger's own place (log dir, W&B run files,
        MLflow run artifacts), the HTML page shown on the W&B run too; returns where the HTML went."""
        payload: dict[str, Any] = {"findings": [f.to_dict() for f in findings], "versions": versions()}
        payload["run"] = self.run_record.to_dict(trainer)
        page = render_html(findings, present, log_writer.logged(trainer), versions())
        log_writer.log_file(trainer, "recipe_report.md", text)
        log_writer.log_file(trainer, "recipe_report.json", json.dumps(payload, indent=2))
        places = log_writer.log_file(trainer, "recipe_report.html", page)
        log_writer.log_report_html(trainer, "recipe/report_html", page)
        return places

    @staticmethod
    def _print_console(findings: list[Finding], present: set[str], places: list[str]) -> None:
        """The checklist on the console, once, through Lightning's rank-zero logger."""
        footer = f"Full report: {places[0]}" if places else ""
        rank_zero_info("\n" + render_console(findings, present, footer=footer))

    def _write_tensorboard(self, trainer: pl.Trainer, findings: list[Finding], present: set[str]) -> None:
        """The TensorBoard text ``recipe/report`` and, when new scalars appeared, the Custom Scalars layout."""
        writers = log_writer.tensorboard_writers(trainer)
        if not writers:
            return
        text = render_tensorboard_text(findings, present)
        tags = log_writer.scalar_tags(trainer)
        layout = custom_scalars_layout(tags) if tags != self._layout_tags else {}
        for writer in writers:
            writer.add_text("recipe/report", text, global_step=trainer.global_step)
            if layout:
                writer.add_custom_scalars(layout)
            writer.flush()
        if layout:
            self._layout_tags = tags

    def _maybe_print_early(self, trainer: pl.Trainer) -> None:
        if self._early_printed:
            return
        if all(cb.early_finished for cb in self.recipe_callbacks(trainer)):
            self._early_printed = True
            self.write(trainer)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._early_printed = False
        self._rank_zero, self._counter = trainer.is_global_zero, step_counter(trainer)  # read at every batch
        self.run_record.start(trainer)
        self._early_due = False
        self._printed_markdown = ""
        self._layout_tags = set()

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._rank_zero:
            counter = self._counter
            self.run_record.record_batch(trainer, pl_module, outputs, None if counter is None else counter.completed)
        self._maybe_print_early(trainer)

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._early_due and not self._early_printed:
            self._early_printed = True
            self.write(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a one-off check still watching after the first epoch: the early checklist comes when the
        # next epoch starts; a fit that ends here prints only its end-of-fit checklist
        if not self._early_printed:
            self._early_due = True

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_writer.settle(wait=True)  # the report shows every picture of the fit
        self.write(trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.training and trainer.state.fn == "validate":
            log_writer.settle(wait=True)
            self.write(trainer)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_writer.settle(wait=True)
        self.write(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        log_writer.settle(wait=True)
        self.write(trainer)
