"""One-hot and probability (soft) float targets with cross-entropy are a C-class task, not C binary labels.

A real Trainer trains a classifier whose targets are ``(N, C)`` float rows (``F.one_hot(y).float()``,
or label-smoothed rows) and whose loss is ``F.cross_entropy(logits, rows)``: InitLossCheck expects
log C at init, FullEvalSet's figure is the model's own mean cross-entropy on the val set, and
DataInspector counts C classes (the argmax of each row). None of them warns on this healthy model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from recipe_callbacks import DataInspector, FullEvalSet, InitLossCheck
from tests.support import TinyClassifier, blobs, fast_trainer, finding_values, loader, read_events, scalar_values

C = 4


class RowTargetClassifier(TinyClassifier):
    """TinyClassifier whose targets are float rows: cross-entropy against class probabilities."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, rows = batch
        return F.cross_entropy(self(x), rows)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        x, rows = batch
        loss = F.cross_entropy(self(x), rows)
        self.log("val_loss", loss)
        return loss


def rows(n: int, seed: int, smoothing: float = 0.0) -> TensorDataset:
    x, y = blobs(n, num_classes=C, seed=seed).tensors
    target = F.one_hot(y, C).float() * (1 - smoothing) + smoothing / C
    return TensorDataset(x, target)


def fit(tmp_path: Path, callback: Any, smoothing: float = 0.0) -> tuple[RowTargetClassifier, TensorDataset]:
    torch.manual_seed(0)
    model, val = RowTargetClassifier(num_classes=C), rows(40, seed=1, smoothing=smoothing)
    trainer = fast_trainer(tmp_path, callbacks=[callback], max_epochs=2)
    trainer.fit(model, loader(rows(64, seed=0, smoothing=smoothing)), loader(val, batch_size=16))
    return model, val


def test_init_loss_check_expects_log_c_for_one_hot_targets(tmp_path: Path) -> None:
    cb = InitLossCheck()
    fit(tmp_path, cb)
    assert [f.status for f in cb.findings] == ["pass"], [f.summary for f in cb.findings]
    f = cb.findings[0]
    assert f.summary.startswith("multiclass loss at init") and "log C" in f.summary
    assert f.values["expected"] == pytest.approx(math.log(C))
    assert f.values["num_classes"] == C
    assert f.values["observed"] == pytest.approx(f.values["step_loss"], rel=1e-5)  # the model's own loss at init
    logged = finding_values(read_events(tmp_path / "run"), "recipe.init_loss_check")
    assert logged["expected"] == pytest.approx(math.log(C), rel=1e-3)


@pytest.mark.parametrize("smoothing", [0.0, 0.1], ids=["one_hot", "label_smoothed"])
def test_full_eval_set_figure_is_the_models_own_cross_entropy(tmp_path: Path, smoothing: float) -> None:
    cb = FullEvalSet(metrics=["accuracy"])
    model, val = fit(tmp_path, cb, smoothing)
    x, target = val.tensors
    model.eval()
    with torch.no_grad():
        logits = model(x).double()
    own = float(F.cross_entropy(logits, target.double()))  # the model's own loss, torch's soft-target formula
    accuracy = float((logits.argmax(1) == target.argmax(1)).double().mean())
    f = cb.findings[-1]
    assert f.status == "pass", f.summary
    assert f.values["loss"] == pytest.approx(own, rel=1e-6)
    assert f.values["accuracy"] == pytest.approx(accuracy)
    assert f.values["num_samples"] == len(val)
    logged = scalar_values(read_events(tmp_path / "run"), "recipe.full_eval_set/loss")
    assert logged[-1] == pytest.approx(own, rel=1e-5)


def test_data_inspector_counts_the_classes_of_one_hot_rows(tmp_path: Path) -> None:
    cb = DataInspector(top_k=4)
    fit(tmp_path, cb)
    statuses = {f.summary.split(":")[0][:40]: f.status for f in cb.findings}
    assert all(f.status == "pass" for f in cb.findings), statuses
    assert cb.label_counts is not None and cb.label_counts.tolist() == [16] * C  # 64 samples, argmax classes
    prior = cb.class_prior()
    assert prior is not None and prior.tolist() == [0.25] * C
    hardest = next(f for f in cb.findings if "highest-loss" in f.summary)
    assert hardest.values["val_samples"] == 40
    assert cb.hardest_losses is not None and torch.isfinite(cb.hardest_losses).all()


def test_the_full_preset_neither_crashes_nor_warns_on_one_hot_targets(tmp_path: Path) -> None:
    from recipe_callbacks import presets
    from recipe_callbacks.plumbing.callback_base import RecipeCallback

    torch.manual_seed(0)
    callbacks = presets.callbacks("full")
    trainer = fast_trainer(tmp_path, callbacks=callbacks, max_epochs=3)
    trainer.fit(RowTargetClassifier(num_classes=C), loader(rows(64, seed=0)), loader(rows(40, seed=1)))
    checks = [cb for cb in callbacks if isinstance(cb, RecipeCallback)]
    assert len(checks) > 10
    alarms = [(f.check, f.summary) for cb in checks for f in cb.findings if f.status in ("warn", "fail")]
    assert alarms == []
