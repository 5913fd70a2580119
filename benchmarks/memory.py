"""Peak memory and measured cost of the one-off checks against the bare Trainer.

A model whose weights dominate memory (an MLP of about 50M parameters, 200 MB of fp32 weights) is
trained for a few steps, once bare and once with the one-off checks that run the model
(``InitLossCheck``, ``BatchIndependenceCheck``, ``InputIndependentBaseline``,
``OverfitOneBatch``), with Adam and with SGD. Each configuration runs in a fresh process, so its
peak is its own: peak RSS (``ru_maxrss``) on the CPU, ``torch.cuda.max_memory_allocated`` when
CUDA is present (the device is chosen automatically). It prints the peak of each run, the ratio
of the checked run's peak to the bare run's (target: at most 1.1), and each check's
``cost_steps`` (its measured wall time over the median training step of the same run).

    python benchmarks/memory.py
    python benchmarks/memory.py --json benchmarks/memory.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import subprocess
import sys
import warnings
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

CHECKS = ("InitLossCheck", "BatchIndependenceCheck", "InputIndependentBaseline", "OverfitOneBatch")
WIDTHS = (2048, 4096, 4096, 4096, 2048, 10)  # 50.3M parameters


def _child(optimizer: str, checked: bool, steps: int) -> dict[str, Any]:
    import lightning.pytorch as pl
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    import recipe_callbacks as rc

    cuda = torch.cuda.is_available()

    class BigMLP(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            layers: list[nn.Module] = []
            for i, (a, b) in enumerate(itertools.pairwise(WIDTHS)):
                layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(WIDTHS) - 2 else [])
            self.net = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)  # type: ignore[no-any-return]

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return nn.functional.cross_entropy(self(x), y)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            if optimizer == "adam":
                return torch.optim.Adam(self.parameters(), lr=1e-4)
            return torch.optim.SGD(self.parameters(), lr=0.01)

    pl.seed_everything(0)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32 * (steps + 1), WIDTHS[0], generator=g), torch.arange(32 * (steps + 1)) % 10)
    callbacks = [getattr(rc, name)(on_fail="ignore") for name in CHECKS] if checked else []
    model = BigMLP()
    with TemporaryDirectory() as root, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = pl.Trainer(
            accelerator="auto", devices=1, max_steps=steps, logger=False, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, default_root_dir=root, callbacks=callbacks,
        )
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        trainer.fit(model, DataLoader(data, batch_size=32))
    costs = {
        type(cb).__name__: f.values.get("cost_steps", 0.0)
        for cb in callbacks for f in cb.findings if "cost_steps" in f.values
    }
    return {
        "optimizer": optimizer,
        "checked": checked,
        "params": sum(p.numel() for p in model.parameters()),
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_cuda": torch.cuda.max_memory_allocated() if cuda else None,
        "cost_steps": costs,
        "statuses": {type(cb).__name__: [f.status for f in cb.findings] for cb in callbacks},
    }


def _run(optimizer: str, checked: bool, steps: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "--child", optimizer, "--checked" if checked else "--bare", "--steps", str(steps)],
        check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", choices=("adam", "sgd"), default=None)
    parser.add_argument("--checked", action="store_true")
    parser.add_argument("--bare", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(args.child, args.checked, args.steps)))
        return
    rows = []
    for optimizer in ("adam", "sgd"):
        bare, checked = _run(optimizer, False, args.steps), _run(optimizer, True, args.steps)
        key = "peak_cuda" if bare["peak_cuda"] is not None else "peak_rss"
        row = {
            "optimizer": optimizer, "params": bare["params"], "measure": key,
            "bare_peak_mb": bare[key] / 2**20, "checked_peak_mb": checked[key] / 2**20,
            "ratio": checked[key] / bare[key], "cost_steps": checked["cost_steps"], "statuses": checked["statuses"],
        }
        rows.append(row)
        costs = ", ".join(f"{k} {v:.1f}" for k, v in row["cost_steps"].items())
        print(f"{optimizer:5s} {row['params'] / 1e6:.1f}M params  {key}: bare {row['bare_peak_mb']:.0f} MB, "
              f"one-off checks {row['checked_peak_mb']:.0f} MB, ratio {row['ratio']:.3f}  | cost_steps: {costs}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
