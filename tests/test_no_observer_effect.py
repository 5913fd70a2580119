"""No observer effect: with a fixed seed, every observing callback (alone, and the ``monitor`` and
``skeleton`` presets without their seeding member) leaves the final weights bit-identical to the bare run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import recipe_callbacks
from examples.digits import digits_datasets
from recipe_callbacks import presets

# Callbacks whose job is to change training; listed in the README, excluded here.
CHANGES_TRAINING_ON_PURPOSE = {"SeedEverything"}  # and InitLossCheck(fix_bias=True), off by default


class DropoutCNN(pl.LightningModule):
    """Dropout and a shuffled loader make the run depend on every RNG draw."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.3))
        self.head = nn.Linear(8 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def final_weights(root: Path, callbacks: list[pl.Callback]) -> dict[str, torch.Tensor]:
    pl.seed_everything(123, workers=True)
    model = DropoutCNN()
    train, val = digits_datasets()
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, limit_train_batches=15, deterministic=True,
        logger=pl.loggers.TensorBoardLogger(str(root), name="run"), callbacks=callbacks,
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(model, DataLoader(train, batch_size=32, shuffle=True), DataLoader(val, batch_size=100))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    return final_weights(tmp_path_factory.mktemp("bare"), [])


OBSERVERS = sorted(
    {name for name, _ in presets._MEMBERS["full"]} - CHANGES_TRAINING_ON_PURPOSE
)


TOGETHER = "BatchIndependenceCheck+CausalityCheck+InputIndependentBaseline+OverfitOneBatch"


@pytest.mark.parametrize("configuration", ["preset:monitor", "preset:skeleton", TOGETHER, *OBSERVERS])
def test_final_weights_are_bit_identical(
    configuration: str, bare: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    if configuration.startswith("preset:"):
        callbacks = [cb for cb in presets.callbacks(configuration.removeprefix("preset:"), on_fail="ignore")
                     if type(cb).__name__ not in CHANGES_TRAINING_ON_PURPOSE]
    else:
        callbacks = [getattr(recipe_callbacks, name)(on_fail="ignore") for name in configuration.split("+")]
        callbacks.append(recipe_callbacks.RecipeReport(False))
    observed = final_weights(tmp_path, callbacks)
    assert observed.keys() == bare.keys()
    for name, tensor in bare.items():
        assert torch.equal(observed[name], tensor), f"{configuration} changed {name}"
