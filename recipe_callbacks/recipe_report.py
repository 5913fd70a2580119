"""RecipeReport: one checklist of every recipe step, on the console, in TensorBoard and on disk."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from typing import TYPE_CHECKING, Any

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

from recipe_callbacks import log_writer
from recipe_callbacks.callback_base import RecipeCallback
from recipe_callbacks.console_report import render_console
from recipe_callbacks.finding import Finding
from recipe_callbacks.html_report import render_html
from recipe_callbacks.run_record import RunRecord
from recipe_callbacks.validation import check_bool

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


def custom_scalars_layout(tag_prefixes: list[str]) -> dict[str, dict[str, list[Any]]]:
    """A TensorBoard Custom Scalars layout: one category per check, one chart of all its scalars.

    Example:
        >>> custom_scalars_layout(["recipe.init_loss_check"])
        {'recipe.init_loss_check': {'all scalars': ['Multiline', ['recipe.init_loss_check/.*']]}}
    """
    return {prefix: {"all scalars": ["Multiline", [f"{prefix}/.*"]]} for prefix in tag_prefixes}


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
        - ``recipe/report``: the checklist as TensorBoard text (Markdown).
        - a Custom Scalars layout with one category per recipe callback on the Trainer.
        - ``recipe_report.html`` (self-contained: the checklist with each check's pictures, numbers
          and advice), ``recipe_report.md``, ``recipe_report.json``
          (``{"findings": [...], "versions": {...}}``).
        - ``recipe/report_html``: the HTML page on a W&B run.

    Example::

        trainer = Trainer(callbacks=[InitLossCheck(), RecipeReport()])
    """

    def __init__(self, print_report: bool = True) -> None:
        self.print_report = check_bool("RecipeReport", "print_report", print_report)
        self._early_printed = False
        self._early_due = False
        self.last_markdown = ""
        self.run_record = RunRecord()
        self._printed_markdown = ""

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
        writers = log_writer.tensorboard_writers(trainer)
        for writer in writers:
            writer.add_text("recipe/report", text, global_step=trainer.global_step)
            writer.flush()
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

    def _maybe_print_early(self, trainer: pl.Trainer) -> None:
        if self._early_printed:
            return
        if all(cb.early_finished for cb in self.recipe_callbacks(trainer)):
            self._early_printed = True
            self.write(trainer)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._early_printed = False
        self.run_record.start(trainer)
        self._early_due = False
        self._printed_markdown = ""
        if trainer.is_global_zero:
            layout = custom_scalars_layout([cb.tag_prefix for cb in self.recipe_callbacks(trainer)])
            for writer in log_writer.tensorboard_writers(trainer):
                writer.add_custom_scalars(layout)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.is_global_zero:
            self.run_record.record_batch(trainer, pl_module, outputs)
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
        self.write(trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.training and trainer.state.fn == "validate":
            self.write(trainer)

    @override
    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.write(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self.write(trainer)
