"""The console checklist: status first, a line per verdict, fits the width, colour only on a
terminal, advice only under WARN/FAIL, printed once early and once at the end (never twice the same);
with rich and without it."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import pytest

from recipe_callbacks import Finding, RecipeCallback, RecipeReport
from recipe_callbacks.plumbing.console_report import (
    checklist,
    console_settings,
    render_console,
    render_plain,
    render_rich,
)
from recipe_callbacks.recipe_report import RECIPE_STEPS
from tests.support import TinyClassifier, blobs, fast_trainer, loader

ANSI = re.compile(r"\x1b\[[0-9;]*m")
LONG = "the outputs of samples [0, 21, 42, 63] depend only on their own inputs " * 4
FINDINGS = [
    Finding("DataInspector", "pass", "label counts over 1438 samples " * 6),
    Finding("DataInspector", "pass", "0 of 359 validation samples are copies"),
    Finding("InitLossCheck", "warn", "loss at init 4.1, expected 1.39", {"observed": 4.1},
            "shrink the weights of the final layer " * 5),
    Finding("InputVisualizer", "skip", "could not find the input", {}, "set InputVisualizer(input_key=...)"),
    Finding("BatchIndependenceCheck", "fail", LONG, {}, "look for a reshape that mixes the batch"),
    Finding("FullEvalSet", "pass", "val loss 0.31 ± 0.07, n = 359", {}, "a pass has no advice to show"),
]
PRESENT = {f.check for f in FINDINGS} | {"UpdateRatioMonitor"}
NOT_RUN = sum(len(checks) for _, _, checks in RECIPE_STEPS) - len(PRESENT)


@pytest.mark.parametrize("render", [render_plain, render_rich])
@pytest.mark.parametrize("width", [120, 80, 60])
def test_lines_fit_status_first_advice_only_under_warn_and_fail(render: Any, width: int) -> None:
    text = render(checklist(FINDINGS, PRESENT), width=width, footer="Full report: /runs/version_0/recipe_report.html")
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    assert not ANSI.search(text)
    tally = f"Recipe report: 1 fail, 1 warn, 3 pass, 1 skip, 1 waiting, {NOT_RUN} not run"
    assert " ".join(lines[:2]).startswith(tally)
    verdicts = [line for line in lines if re.match(r"(PASS|WARN|FAIL|SKIP|WAIT) ", line)]
    assert [v[:4] for v in verdicts] == ["PASS", "PASS", "PASS", "WARN", "SKIP", "FAIL", "WAIT"]  # recipe order
    advice = [i for i, line in enumerate(lines) if "↳" in line]
    assert [lines[i - 1][:4] for i in advice] == ["WARN", "FAIL"]  # right under its verdict, nowhere else
    assert "set InputVisualizer" not in text and "a pass has no advice" not in text
    assert "UpdateRatioMonitor" in next(v for v in verdicts if v.startswith("WAIT"))
    assert "SeedEverything" in text[text.index("Not on the Trainer: "):]
    assert lines[-1].startswith("Full report:") or "recipe_report.html" in lines[-1]


@pytest.mark.parametrize("use_rich", [False, True])
def test_colour_on_a_terminal_only(use_rich: bool) -> None:
    coloured = render_console(FINDINGS, PRESENT, width=120, colour=True, use_rich=use_rich)
    plain = render_console(FINDINGS, PRESENT, width=120, colour=False, use_rich=use_rich)
    assert ANSI.search(coloured) and not ANSI.search(plain)
    words = [line.rstrip() for line in ANSI.sub("", coloured).splitlines()]
    assert words == plain.splitlines()  # the same words either way
    assert max(len(ANSI.sub("", line)) for line in coloured.splitlines()) <= 120


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_width_and_colour_follow_the_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert console_settings(io.StringIO()) == (120, False)  # not a terminal: 120 columns, no colour
    assert console_settings(_Terminal()) == (100, True)
    monkeypatch.setenv("NO_COLOR", "1")
    assert console_settings(_Terminal()) == (100, False)


class OneOff(RecipeCallback):
    """A one-off check that reports at batch 1, and finishes only when told to."""

    one_off = True

    def __init__(self, finishes: bool) -> None:
        super().__init__(on_fail="ignore")
        self.finishes = finishes

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 1 and not self.findings:
            self.report(trainer, "warn", "loss at init 4.1, expected 1.39", {}, "shrink the last layer")
            if self.finishes:
                self.finish_early()


class Monitor(RecipeCallback):
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.report(trainer, "pass", "watched the whole run")



@pytest.mark.parametrize("use_rich", [False, True])
def test_printed_once_early_and_once_at_the_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                use_rich: bool) -> None:
    monkeypatch.setattr("recipe_callbacks.plumbing.console_report.rich_available", lambda: use_rich)
    messages: list[str] = []
    monkeypatch.setattr("recipe_callbacks.recipe_report.rank_zero_info", messages.append)
    trainer = fast_trainer(tmp_path, callbacks=[OneOff(True), Monitor(), RecipeReport()], max_epochs=2)
    trainer.fit(TinyClassifier(), loader(blobs()))
    assert len(messages) == 2
    early, end = (m.strip("\n").splitlines() for m in messages)
    assert "WAIT" in " ".join(early) and "watched the whole run" in " ".join(end)
    for lines in (early, end):
        assert max(len(line) for line in lines) <= 120  # not a terminal: 120 columns
        assert next(line for line in lines if "InitLossCheck" in line or "OneOff" in line).startswith("WARN")
        assert lines[-1] == f"Full report: {Path(trainer.logger.log_dir) / 'recipe_report.html'}"


def test_a_one_epoch_fit_prints_its_checklist_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a one-off check still watching when the only epoch ends (LossDecreaseCheck over more steps
    # than the epoch has): the end of fit follows at once, so only its checklist is printed
    messages: list[str] = []
    monkeypatch.setattr("recipe_callbacks.recipe_report.rank_zero_info", messages.append)
    report = RecipeReport()
    trainer = fast_trainer(tmp_path, callbacks=[OneOff(False), Monitor(), report], max_epochs=1)
    trainer.fit(TinyClassifier(), loader(blobs()))
    assert len(messages) == 1 and "watched the whole run" in messages[0] and "WAIT" not in messages[0]
    assert (Path(trainer.logger.log_dir) / "recipe_report.md").read_text() == report.last_markdown
    trainer.validate(TinyClassifier(), loader(blobs()))  # nothing new: the same checklist is not repeated
    assert len(messages) == 1


def test_early_checklist_when_the_second_epoch_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    messages: list[str] = []
    monkeypatch.setattr("recipe_callbacks.recipe_report.rank_zero_info", messages.append)
    trainer = fast_trainer(tmp_path, callbacks=[OneOff(False), Monitor(), RecipeReport()], max_epochs=2)
    trainer.fit(TinyClassifier(), loader(blobs()))
    assert len(messages) == 2
    assert "WAIT" in messages[0] and "watched the whole run" in messages[1]
