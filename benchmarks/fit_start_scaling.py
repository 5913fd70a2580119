"""Fit-start cost of DataInspector and FullEvalSet against the size of the data set.

Trains one step of the benchmark's tiny model on data sets of 25,000 to 200,000 samples (train and
validation each) and times each callback's hooks before the first training batch (``setup``,
``on_fit_start``, ``on_train_start``), in seconds and in training-step equivalents of the bare
median step. DataInspector reads at most ``max_samples`` samples of each set (10,000 by default):
its time must stop growing beyond that; FullEvalSet does no pass of its own at fit start.

    python benchmarks/fit_start_scaling.py
    python benchmarks/fit_start_scaling.py --sizes 25000,200000 --max-samples 50000
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead

import recipe_callbacks

FIT_START = ("setup", "on_fit_start", "on_train_start")


def fit_start_seconds(callback: Any, n: int, root: str) -> float:
    probe = overhead.Probe([callback], None)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 32, generator=g), torch.randint(0, 10, (n,), generator=g)
    train = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    val = DataLoader(TensorDataset(x.flip(0), y.flip(0)), batch_size=256)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=1, limit_val_batches=0, logger=False, callbacks=[callback],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
        default_root_dir=root,
    )
    with warnings.catch_warnings(), open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        warnings.simplefilter("ignore")
        trainer.fit(overhead.Classifier(overhead.tiny_net()), train, val)
    return sum(probe.by_hook.get(name, 0.0) for name in FIT_START)


def bare_step_seconds(root: str) -> float:
    timer = overhead.StepTimer(overhead.Probe([], None), None)
    train, _ = overhead.data("tiny", 100, 32)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=100, logger=False, callbacks=[timer],
                         enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                         default_root_dir=root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(overhead.Classifier(overhead.tiny_net()), train)
    return statistics.median(b - a for a, b in zip(timer.starts, timer.starts[1:], strict=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="25000,50000,100000,200000")
    parser.add_argument("--max-samples", type=int, default=10000, help="DataInspector(max_samples=...)")
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    with TemporaryDirectory() as root:
        step = bare_step_seconds(root)
        for n in (int(v) for v in args.sizes.split(",")):
            for name, build in (
                ("DataInspector", lambda: recipe_callbacks.DataInspector(max_samples=args.max_samples)),
                ("FullEvalSet", lambda: recipe_callbacks.FullEvalSet()),
            ):
                start = time.perf_counter()
                seconds = fit_start_seconds(build(), n, root)
                rows.append({"callback": name, "samples": n, "fit_start_s": seconds, "step_equivalents": seconds / step,
                             "wall_s": time.perf_counter() - start})
                print(f"{name} n={n}: {seconds:.3f} s", file=sys.stderr)
    print(f"bare median step {step * 1000:.2f} ms; DataInspector(max_samples={args.max_samples})")
    print(f"{'callback':14} {'samples':>8} {'fit start s':>11} {'step equiv':>10}")
    for row in rows:
        print(f"{row['callback']:14} {row['samples']:8d} {row['fit_start_s']:11.3f} {row['step_equivalents']:10.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"bare_step_s": step, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
