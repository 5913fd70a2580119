"""OverfitOneBatch on a real Trainer: planted bugs of recipe step 2h caught, a healthy model passed."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from recipe_callbacks.overfit_one_batch import OverfitOneBatch
from recipe_callbacks.plumbing.finding import RecipeCheckError, RecipeWarning
from tests.support import TinyClassifier, blobs, fast_trainer, finding_values, loader, read_events

TAG = "recipe.overfit_one_batch"


class AdamClassifier(TinyClassifier):
    """The healthy model: an MLP with Adam."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class AllButOneFrozen(AdamClassifier):
    """Planted bug: every parameter but the final bias has ``requires_grad=False``."""

    def __init__(self) -> None:
        super().__init__(lr=0.02)
        for name, p in self.named_parameters():
            p.requires_grad_(name == "net.2.bias")


class ZeroLR(AdamClassifier):
    """Planted bug: a learning rate of zero."""

    def __init__(self) -> None:
        super().__init__(lr=0.0)


class WrongSign(AdamClassifier):
    """Planted bug: the loss is the negated cross-entropy."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return -nn.functional.cross_entropy(self(x), y)


class Maximising(AdamClassifier):
    """Planted bug: the optimizer ascends the loss (``maximize=True``), so the loss rises."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, maximize=True)


class DictBatches(AdamClassifier):
    """Healthy, with dict batches ``{"image": x, "label": y}``."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self(batch["image"]), batch["label"])


class ManualOptimization(AdamClassifier):
    """Cannot be checked: its training_step steps the optimizer itself and returns nothing."""

    def __init__(self) -> None:
        super().__init__(lr=0.02)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        opt = self.optimizers()
        assert isinstance(opt, pl.core.optimizer.LightningOptimizer)
        opt.zero_grad()
        self.manual_backward(nn.functional.cross_entropy(self(batch[0]), batch[1]))
        opt.step()


def _fit(model: pl.LightningModule, root: Path, data: Any = None, **cb_kwargs: Any) -> OverfitOneBatch:
    pl.seed_everything(0)
    cb = OverfitOneBatch(on_fail="ignore", **cb_kwargs)
    trainer = fast_trainer(root, callbacks=[cb], max_steps=2)
    trainer.fit(model, data if data is not None else loader(blobs(64), batch_size=32))
    assert cb.early_finished
    return cb


def test_healthy_model_memorises_and_stops_early(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cb = _fit(AdamClassifier(lr=0.02), tmp_path)
    (finding,) = cb.findings
    assert finding.status == "pass", finding.message()
    v = finding.values
    assert v["lowest_loss"] <= v["target_loss"] == pytest.approx(0.1 * v["initial_loss"])
    assert 0 < v["steps"] < 60  # stopped when the target was reached
    # too few training steps to time (max_steps=2): the cost is the count, 2 of 32 samples a step
    assert v["cost_steps"] == pytest.approx((v["steps"] + 1 / 3) * 2 / 32)
    assert v["cost_seconds"] > 0
    ea = read_events(tmp_path / "run")
    shown = finding_values(ea, TAG)
    assert shown["lowest_loss"] == pytest.approx(v["lowest_loss"], rel=1e-3)
    assert shown["cost_steps"] == pytest.approx(v["cost_steps"], rel=1e-3)
    (image,) = ea.Images(f"{TAG}/loss_curve")
    assert image.width > 100 and image.height > 100


def test_dict_batches_work_without_configuration(tmp_path: Path) -> None:
    x, y = blobs(64).tensors
    data = loader([{"image": xi, "label": yi} for xi, yi in zip(x, y, strict=True)], batch_size=16)
    torch.manual_seed(0)
    (finding,) = _fit(DictBatches(lr=0.02), tmp_path, data).findings
    assert finding.status == "pass", finding.message()
    assert finding.values["num_samples"] == 2


def test_all_parameters_but_one_frozen_is_caught(tmp_path: Path) -> None:
    torch.manual_seed(0)
    (finding,) = _fit(AllButOneFrozen(), tmp_path).findings
    assert finding.status == "fail", finding.message()
    assert finding.values["lowest_loss"] > finding.values["target_loss"]  # only the label prior can be learned
    assert finding.values["frozen_params"] == 3
    assert "3 of 4 parameter tensors" in finding.advice and "requires_grad=False" in finding.advice


def test_learning_rate_zero_is_caught(tmp_path: Path) -> None:
    torch.manual_seed(0)
    (finding,) = _fit(ZeroLR(), tmp_path).findings
    assert finding.status == "fail", finding.message()
    assert finding.values["lr"] == 0.0
    assert finding.values["lowest_loss"] == finding.values["initial_loss"]
    assert "learning rate is 0" in finding.advice


def test_loss_with_a_wrong_sign_is_caught(tmp_path: Path) -> None:
    torch.manual_seed(0)
    (finding,) = _fit(WrongSign(lr=0.02), tmp_path).findings
    assert finding.status == "fail", finding.message()
    assert finding.values["lowest_loss"] < 0
    assert "wrong sign" in finding.advice and "allow_negative_loss" in finding.advice


def test_rising_loss_is_caught(tmp_path: Path) -> None:
    torch.manual_seed(0)
    (finding,) = _fit(Maximising(), tmp_path, max_steps=20).findings
    assert finding.status == "fail", finding.message()
    assert finding.values["final_loss"] > finding.values["initial_loss"]
    assert "rose" in finding.advice


def test_dropout_is_named_when_the_model_does_not_memorise(tmp_path: Path) -> None:
    class Dropped(AdamClassifier):
        def __init__(self) -> None:
            super().__init__(lr=0.02)
            self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.9), nn.Linear(16, 4))

    torch.manual_seed(0)
    (finding,) = _fit(Dropped(), tmp_path, max_steps=10, target_loss=1e-9).findings
    assert finding.status != "pass", finding.message()
    assert "dropout is on in train mode (net.2)" in finding.advice


def test_on_fail_raise_stops_training(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trainer = fast_trainer(tmp_path, callbacks=[OverfitOneBatch(on_fail="raise")], max_steps=2)
    with pytest.raises(RecipeCheckError, match="OverfitOneBatch"):
        trainer.fit(ZeroLR(), loader(blobs(32), batch_size=16))
    assert trainer.global_step == 0


def test_manual_optimization_is_skipped_not_crashed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecipeWarning)
        (finding,) = _fit(ManualOptimization(), tmp_path).findings
    assert finding.status == "skip"
    assert "manual optimization" in finding.summary


class OneCycle(AdamClassifier):
    """Healthy; its configure_optimizers asks the Trainer for the run length, which a copy has not."""

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=self.lr)
        total = int(self.trainer.estimated_stepping_batches)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.OneCycleLR(opt, 0.5, total_steps=total)}


def test_optimizer_of_the_trainer_is_rebuilt_when_configure_optimizers_needs_the_trainer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    (finding,) = _fit(OneCycle(), tmp_path).findings
    assert finding.status == "pass", finding.message()
    assert finding.values["lr"] == pytest.approx(0.5 / 25)  # the user's Adam, at OneCycle's start (max_lr / 25)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_samples": 0}, ValueError, r"OverfitOneBatch\(num_samples=0\): num_samples"),
        ({"max_steps": 1.5}, TypeError, r"OverfitOneBatch\(max_steps=1.5\): max_steps"),
        ({"target_loss": "low"}, TypeError, r"OverfitOneBatch\(target_loss='low'\): target_loss"),
        ({"lr": -1.0}, ValueError, r"OverfitOneBatch\(lr=-1.0\): lr"),
        ({"allow_negative_loss": 1}, TypeError, r"OverfitOneBatch\(allow_negative_loss=1\): allow_negative_loss"),
        ({"on_fail": "explode"}, ValueError, r"OverfitOneBatch\(on_fail='explode'\): on_fail"),
    ],
)
def test_argument_errors_name_the_argument(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        OverfitOneBatch(**kwargs)
