"""Measured cost of the ``skeleton`` preset's one-off checks on small healthy models of the common
families (a character LSTM and a nanoGPT-style language model, an 11-class segmentation net, an MSE
regression; ``tests/copy_families.py``): each check's ``cost_steps`` (its wall time over the median
training step of the same run), their sum against the budget (50 step equivalents plus one
validation pass), and every verdict.

    python benchmarks/one_off_cost.py
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipe_callbacks import RecipeCallback, presets
from tests import copy_families as families


def cases() -> dict[str, Any]:
    data, vocab = families.char_data(n=320)
    return {
        "lstm_lm": lambda: (families.CharLSTM(vocab), DataLoader(data, batch_size=16)),
        "nanogpt": lambda: (families.NanoGPT(vocab), DataLoader(data, batch_size=16)),
        "segmentation_11": lambda: (
            families.Segmenter(), DataLoader(families.digit_segments(n=320), batch_size=16)
        ),
        "mse_regression": lambda: (families.Regressor(), DataLoader(families.diabetes(), batch_size=32)),
    }


def main() -> None:
    torch.set_num_threads(1)
    for name, make in cases().items():
        pl.seed_everything(0)
        model, loader = make()
        callbacks = presets.callbacks("skeleton")
        with TemporaryDirectory() as root, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = pl.Trainer(
                accelerator="cpu", devices=1, max_steps=20, logger=False, enable_progress_bar=False,
                enable_model_summary=False, enable_checkpointing=False, default_root_dir=root,
                callbacks=callbacks, limit_val_batches=0,
            )
            trainer.fit(model, loader)
        costs: dict[str, float] = {}
        verdicts: list[str] = []
        for cb in callbacks:
            if not isinstance(cb, RecipeCallback) or not cb.one_off:
                continue
            for f in cb.findings:
                verdicts.append(f"{f.check}:{f.status}")
                for key, value in f.values.items():
                    if key.endswith("cost_steps"):
                        costs[f.check] = costs.get(f.check, 0.0) + value
        total = sum(costs.values())
        detail = ", ".join(f"{k} {v:.1f}" for k, v in costs.items() if v >= 0.05)
        print(f"{name:16s} one-off cost_steps {total:5.1f} (budget 50)  [{detail}]")
        print(f"{'':16s} {' '.join(verdicts)}")


if __name__ == "__main__":
    main()
