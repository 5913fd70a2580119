"""RecipeReport: the checklist on the console, in TensorBoard text and in the two files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from lightning.pytorch.callbacks import ModelCheckpoint
from tensorboard.plugins.custom_scalar import layout_pb2

from recipe_callbacks import RecipeCallback, RecipeCheckError, RecipeReport
from recipe_callbacks.recipe_report import RECIPE_STEPS
from tests.support import TinyClassifier, blobs, fast_trainer, loader, read_events, text_values


class InitLossCheck(RecipeCallback):
    """Stands in for a one-off check: reports on the second training batch, then finishes."""

    one_off = True

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 1 and not self.is_resumed(trainer):
            self.report(trainer, "warn", "loss at init 4.1, expected 1.39", {"observed": 4.1}, "shrink the last layer")
            self.finish_early()


class Extra(RecipeCallback):
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self.report(trainer, "fail", "planted", {}, "")


def test_report_files_schema_and_tensorboard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # what the report prints goes through Lightning's rank-zero logger; record the messages
    messages: list[str] = []
    monkeypatch.setattr("recipe_callbacks.recipe_report.rank_zero_info", messages.append)
    trainer = fast_trainer(tmp_path, callbacks=[InitLossCheck(), RecipeReport()], max_epochs=2)
    trainer.fit(TinyClassifier(), loader(blobs()))
    printed = [m for m in messages if "Recipe report: " in m]
    # written after the early checks and at the end of fit; the end-of-fit checklist says the same
    # as the early one here, so the console shows it once (tests/test_console_report.py has both)
    assert len(printed) == 1
    log_dir = Path(trainer.logger.log_dir)
    md = (log_dir / "recipe_report.md").read_text()
    assert "| 2d/2e | Verify loss at init; init well | InitLossCheck | WARN | loss at init 4.1, expected 1.39 |" in md
    assert "| 2a | Fix random seed | SeedEverything | not run | | add recipe_callbacks.SeedEverything |" in md
    assert md.count("| not run |") == sum(len(c) for _, _, c in RECIPE_STEPS) - 1
    data = json.loads((log_dir / "recipe_report.json").read_text())
    assert set(data) == {"findings", "versions", "run"}  # "run": what recipe-callbacks compare reads
    assert data["findings"] == [
        {"check": "InitLossCheck", "status": "warn", "summary": "loss at init 4.1, expected 1.39",
         "values": {"observed": 4.1}, "advice": "shrink the last layer"}
    ]
    assert {"python", "lightning", "torch", "torchmetrics", "tensorboard", "recipe-callbacks"} <= set(data["versions"])
    ea = read_events(log_dir)
    texts = text_values(ea, "recipe/report")
    assert len(texts) == 2 and "InitLossCheck" in texts[-1]
    layout = layout_pb2.Layout()
    layout.ParseFromString(ea.Tensors("custom_scalars__config__")[0].tensor_proto.string_val[0])
    (category,) = layout.category
    assert category.title == "recipe.init_loss_check"
    assert list(category.chart[0].multiline.tag) == ["recipe.init_loss_check/.*"]


def test_early_report_waits_for_the_one_off_checks(tmp_path: Path) -> None:
    report = RecipeReport(print_report=False)
    seen: list[str] = []

    class Spy(RecipeCallback):
        def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
            seen.append(report.last_markdown)

    trainer = fast_trainer(tmp_path, callbacks=[InitLossCheck(), report, Spy()], max_steps=3)
    trainer.fit(TinyClassifier(), loader(blobs()))
    assert seen[0] == ""  # batch 0: the one-off check has not reported
    assert "WARN" in seen[1]  # batch 1: it reported and finished, the early checklist is out


def test_unknown_checks_listed_and_report_written_on_exception(tmp_path: Path) -> None:
    trainer = fast_trainer(tmp_path, logger=False, callbacks=[Extra(on_fail="raise"), RecipeReport(False)], max_steps=2)
    with pytest.raises(RecipeCheckError):
        trainer.fit(TinyClassifier(), loader(blobs()))
    md = (tmp_path / "recipe_report.md").read_text()
    assert "| | | Extra | FAIL | planted |" in md


def test_resumed_run_brings_findings_back(tmp_path: Path) -> None:
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    first = fast_trainer(tmp_path, callbacks=[InitLossCheck(), ckpt], max_epochs=1, enable_checkpointing=True)
    first.fit(TinyClassifier(), loader(blobs()))
    check = InitLossCheck()
    trainer = fast_trainer(tmp_path / "b", callbacks=[check, RecipeReport(False)], max_epochs=2)
    trainer.fit(TinyClassifier(), loader(blobs()), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"), weights_only=True)
    assert check.is_resumed(trainer)
    assert [f.summary for f in check.findings] == ["loss at init 4.1, expected 1.39"]
    assert "InitLossCheck | WARN" in (Path(trainer.logger.log_dir) / "recipe_report.md").read_text()


def test_report_argument_checked() -> None:
    with pytest.raises(TypeError, match=r"RecipeReport\(print_report='yes'\)"):
        RecipeReport(print_report="yes")  # type: ignore[arg-type]
