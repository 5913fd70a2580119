"""A tiny character-level language model on real text, checked by CausalityCheck.

The text is the source of a module of Python's standard library (``textwrap``), so no download is
needed. A one-layer causal transformer learns to predict the next character. With ``--leak`` the
attention mask is off by one: position t may also look at t+1, which makes the training loss drop
suspiciously fast, and CausalityCheck names the leak before any compute is spent.

    python examples/char_lm.py            # a correct causal mask: CausalityCheck passes
    python examples/char_lm.py --leak     # the planted off-by-one mask: CausalityCheck fails
"""

from __future__ import annotations

import argparse
import inspect
import sys
import textwrap
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset

import recipe_callbacks


class CharWindows(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Windows of ``block`` characters ``x`` and the same window shifted by one ``y``."""

    def __init__(self, text: str, block: int = 32) -> None:
        self.vocab = sorted(set(text))
        index = {c: i for i, c in enumerate(self.vocab)}
        self.ids = torch.tensor([index[c] for c in text], dtype=torch.long)
        self.block = block

    def __len__(self) -> int:
        return (len(self.ids) - 1) // self.block

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = i * self.block
        chunk = self.ids[start : start + self.block + 1]
        return chunk[:-1], chunk[1:]


def causal_mask(size: int, leak: bool = False) -> torch.Tensor:
    """Boolean attention mask, True where attention is *not* allowed: the future. With ``leak`` the
    mask is off by one and position t also sees t + 1 (the planted bug)."""
    return torch.triu(torch.ones(size, size, dtype=torch.bool), diagonal=2 if leak else 1)


class CharTransformer(pl.LightningModule):
    def __init__(self, vocab_size: int, block: int = 32, width: int = 64, leak: bool = False, lr: float = 3e-3):
        super().__init__()
        self.save_hyperparameters()
        self.token = nn.Embedding(vocab_size, width)
        self.position = nn.Embedding(block, width)
        self.block_layer = nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=4 * width, dropout=0.0,
                                                      batch_first=True)
        self.head = nn.Linear(width, vocab_size)
        self.register_buffer("mask", causal_mask(block, leak), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        h = self.token(ids) + self.position(torch.arange(t, device=ids.device))  # (B, T, W)
        h = self.block_layer(h, src_mask=self.mask[:t, :t])
        return self.head(h)  # (B, T, V) logits

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x).flatten(0, 1), y.flatten())
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.hparams["lr"], weight_decay=0.0)


def run(leak: bool = False, max_steps: int = 60, log_dir: str = "recipe_demo_logs") -> pl.Trainer:
    pl.seed_everything(0, workers=True)
    data = CharWindows(inspect.getsource(textwrap))
    model = CharTransformer(len(data.vocab), leak=leak)
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=max_steps, logger=TensorBoardLogger(log_dir, name="char_lm"),
        callbacks=[recipe_callbacks.CausalityCheck(), recipe_callbacks.LossDecreaseCheck(),
                   recipe_callbacks.RecipeReport()],
        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
    )
    trainer.fit(model, DataLoader(data, batch_size=32, shuffle=True))
    return trainer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leak", action="store_true", help="plant an attention mask that is off by one")
    parser.add_argument("--max-steps", type=int, default=60, help="training steps (default 60)")
    parser.add_argument("--log-dir", default="recipe_demo_logs", help="where TensorBoard logs go")
    args = parser.parse_args(argv)
    trainer = run(args.leak, args.max_steps, args.log_dir)
    (check,) = [cb for cb in trainer.callbacks if isinstance(cb, recipe_callbacks.CausalityCheck)]
    for finding in check.findings:
        print(f"CausalityCheck: {finding.status}: {finding.summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
