"""``import pytorch_lightning as pl``: the callbacks work with its Trainer exactly as with
``lightning.pytorch``'s: logger detection, the run's own log dir, the report, ``RECIPE_PRESET``."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from recipe_callbacks import InitLossCheck, RecipeCallback, RecipeReport
from recipe_callbacks.presets import RecipePreset
from tests.support import blobs, loader, read_events, text_values


class Classifier(pl.LightningModule):
    """The tests' tiny MLP classifier, written against ``pytorch_lightning``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Picture(RecipeCallback):
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self.log_image(trainer, "picture", np.full((4, 4, 3), 128, dtype=np.uint8))
            self.log_text(trainer, "note", "hello")


def _trainer(root: Path, **kw: Any) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, max_steps=3, default_root_dir=str(root), enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, **kw)


def test_pytorch_lightning_trainer_is_complete(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    trainer = _trainer(tmp_path, callbacks=[InitLossCheck(), Picture(), RecipeReport()])  # its default logger
    trainer.fit(Classifier(), loader(blobs()))
    assert type(trainer.logger).__module__.startswith("pytorch_lightning.")
    log_dir = Path(trainer.log_dir)
    assert log_dir == tmp_path / "lightning_logs" / "version_0"  # the run's own version, not default_root_dir
    ea = read_events(log_dir)
    assert len(ea.Images("recipe.picture/picture")) == 1 and text_values(ea, "recipe.picture/note") == ["hello"]
    assert "InitLossCheck" in text_values(ea, "recipe/report")[-1]
    findings = json.loads((log_dir / "recipe_report.json").read_text())["findings"]
    assert [f["status"] for f in findings if f["check"] == "InitLossCheck"] == ["pass"]
    assert (log_dir / "recipe_report.html").exists() and not (tmp_path / "recipe_report.md").exists()
    messages = [r.getMessage() for r in caplog.records]
    assert not any("cannot hold" in m or "no TensorBoardLogger" in m for m in messages)
    # early and end-of-fit checklists are the same here: printed once
    assert sum("Recipe report: " in m for m in messages) == 1


def test_pytorch_lightning_csv_logger_gets_the_files(tmp_path: Path) -> None:
    from pytorch_lightning.loggers import CSVLogger

    trainer = _trainer(tmp_path, logger=CSVLogger(str(tmp_path)), callbacks=[Picture(), RecipeReport(False)])
    trainer.fit(Classifier(), loader(blobs()))
    log_dir = Path(trainer.log_dir)
    assert list((log_dir / "recipe" / "picture" / "picture").glob("*.png"))
    assert (log_dir / "recipe_report.md").exists()


def test_recipe_preset_variable_with_pytorch_lightning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECIPE_PRESET", "monitor")
    trainer = _trainer(tmp_path)
    presets = [cb for cb in trainer.callbacks if isinstance(cb, RecipePreset)]
    assert [p.name for p in presets] == ["monitor"]
    trainer.fit(Classifier(), loader(blobs()))
    added = {type(cb).__name__ for cb in presets[0].added}
    assert {"FullEvalSet", "UpdateRatioMonitor", "RecipeReport"} <= added
    assert (Path(trainer.log_dir) / "recipe_report.json").exists()
