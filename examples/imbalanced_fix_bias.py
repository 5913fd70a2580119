"""Init well (recipe 2e) on a real 1:9 imbalanced task: digit 0 against the nine other digits.

With a default final bias the model predicts 50% positives at init and its loss at step 0 is
about log 2 = 0.693, well above what the class prior alone gives (the binary entropy of the
positive rate, about 0.325 here). ``InitLossCheck`` flags it; ``InitLossCheck(fix_bias=True)``
sets the bias to the log-odds of the positive rate before the first step, and the loss at init
then matches the prior's entropy.

    python examples/imbalanced_fix_bias.py
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import recipe_callbacks


def zero_vs_rest() -> TensorDataset:
    """Digits as flat 64-pixel vectors in [0, 1] with target 1.0 for the digit 0 (about 10%)."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target == 0, dtype=torch.float32)
    return TensorDataset(x, y)


class ZeroDetector(pl.LightningModule):
    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)  # (N,) logits

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.binary_cross_entropy_with_logits(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def run(fix_bias: bool, max_steps: int = 20, log_dir: str = "recipe_demo_logs") -> recipe_callbacks.InitLossCheck:
    pl.seed_everything(0, workers=True)
    check = recipe_callbacks.InitLossCheck(fix_bias=fix_bias)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=max_steps, enable_progress_bar=False, enable_checkpointing=False,
        enable_model_summary=False, logger=TensorBoardLogger(log_dir, name=f"imbalanced_fix_bias_{fix_bias}"),
        callbacks=[check, recipe_callbacks.RecipeReport(print_report=False)],
    )
    trainer.fit(ZeroDetector(), DataLoader(zero_vs_rest(), batch_size=128, shuffle=True))
    return check


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-steps", type=int, default=20, help="training steps per run (default 20)")
    parser.add_argument("--log-dir", default="recipe_demo_logs", help="where TensorBoard logs go")
    args = parser.parse_args(argv)
    for fix_bias in (False, True):
        check = run(fix_bias, args.max_steps, args.log_dir)
        print(f"\nInitLossCheck(fix_bias={fix_bias}):")
        for finding in check.findings:
            print(f"  {finding.status}: {finding.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
