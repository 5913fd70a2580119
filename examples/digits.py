"""The recipe on real data: a small CNN on scikit-learn's handwritten digits (1,797 8x8 images).

Trains a few epochs on the CPU with the recipe callbacks, prints the recipe report and the
command that opens TensorBoard on the run.

    python examples/digits.py --epochs 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import recipe_callbacks


def digits_datasets(val_fraction: float = 0.2, seed: int = 0) -> tuple[TensorDataset, TensorDataset]:
    """Digits as ``(N, 1, 8, 8)`` float images scaled to [0, 1] and int64 labels, split train/val."""
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_val = int(len(y) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


class DigitsCNN(pl.LightningModule):
    """Two conv layers and a linear head; Adam at the recipe's safe 3e-4 (scaled for a tiny net)."""

    def __init__(self, lr: float = 3e-3, channels: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 5, padding=2),  # 5x5: big enough for FirstLayerFilterViz to judge
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.head = nn.Linear(channels * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (N, 1, 8, 8) -> (N, C, 4, 4) -> (N, 10) logits
        return self.head(self.features(x).flatten(1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self.log("val_loss", nn.functional.cross_entropy(logits, y))
        self.log("val_acc", (logits.argmax(1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams["lr"])


class DigitsDataModule(pl.LightningDataModule):
    """The digits split as a DataModule (for LightningCLI)."""

    def __init__(self, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.seed = seed

    def setup(self, stage: str) -> None:
        self.train_set, self.val_set = digits_datasets(seed=self.seed)

    def train_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader[Any]:
        return DataLoader(self.val_set, batch_size=256)


def run(epochs: int = 5, batch_size: int = 64, log_dir: str = "recipe_demo_logs", seed: int = 0,
        max_steps: int = -1, preset: str = "full", monitor_every: int = 5, lr: float = 3e-3) -> pl.Trainer:
    """Train the demo with a recipe preset and return its Trainer (the report is in ``trainer.log_dir``).

    ``monitor_every`` is the monitors' ``every_n_steps``: a short demo run samples often.
    """
    if preset == "monitor":  # the one preset without SeedEverything
        pl.seed_everything(seed, workers=True)
        kwargs = recipe_callbacks.presets.trainer_kwargs(preset, every_n_steps=monitor_every)
    else:
        kwargs = recipe_callbacks.presets.trainer_kwargs(preset, seed=seed, every_n_steps=monitor_every)
    model = DigitsCNN(lr=lr)  # built after the preset: SeedEverything seeded at construction
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        max_steps=max_steps,
        logger=TensorBoardLogger(log_dir, name="digits"),
        enable_progress_bar=False,
        enable_checkpointing=False,
        log_every_n_steps=5,
        **kwargs,
    )
    train_set, val_set = digits_datasets(seed=seed)
    trainer.fit(
        model,
        DataLoader(train_set, batch_size=batch_size, shuffle=True),
        DataLoader(val_set, batch_size=256),
    )
    return trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5, help="training epochs (default 5)")
    parser.add_argument("--max-steps", type=int, default=-1, help="stop after this many steps (default: no limit)")
    parser.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    parser.add_argument("--log-dir", default="recipe_demo_logs", help="where TensorBoard logs go")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--preset", default="full", choices=recipe_callbacks.presets.names(),
                        help="recipe preset to train with (default full)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate (default 3e-3)")
    args = parser.parse_args(argv)
    trainer = run(args.epochs, args.batch_size, args.log_dir, args.seed, args.max_steps, args.preset, lr=args.lr)
    log_dir = Path(str(trainer.log_dir))
    print(f"\nRecipe report: {log_dir / 'recipe_report.html'} (and recipe_report.md, recipe_report.json)")
    print(f"Look at it in TensorBoard:\n    tensorboard --logdir {log_dir.parent.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
