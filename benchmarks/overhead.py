"""Overhead of the recipe callbacks against the bare Trainer, in one process run.

Trains a CNN of about 0.9M parameters on synthetic 3x32x32 data on the CPU with the bare Trainer,
with each preset and with each callback alone. The configurations alternate within every
repetition so that drift of the machine hits them all alike. For each configuration it prints:

- median step time (the median interval between consecutive training batches: the per-step cost
  of monitors, insensitive to one-off work) and its ratio to bare;
- extra wall time of the whole fit over bare, in training-step equivalents (the one-off cost);
- the one-off checks' own ``cost_steps`` as their Findings state it;
- the time spent inside the callbacks' own hooks, in seconds and as a share of the bare fit: on a
  noisy machine this resolves a 1% budget where whole-fit timings cannot (work a callback does
  inside the model's forward, through a forward hook, is not in it);
- peak RSS over the RSS at the start of the fit, and RSS growth per 100 steps over the second half
  of the run (a leak shows as steady growth).

    python benchmarks/overhead.py --json benchmarks/overhead.json
    python benchmarks/overhead.py --steps 60 --repeats 1 --only bare,monitor   # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import recipe_callbacks
from recipe_callbacks import RecipeCallback, presets


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


class BenchCNN(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(128 * 8 * 8, 100)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1))  # (N, 3, 32, 32) -> (N, 100)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.cross_entropy(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-4)


class StepTimer(pl.Callback):
    """Times consecutive training batches and samples RSS; placed first on the Trainer."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.rss: list[int] = []
        self.rss_start = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rss_start = rss_bytes()

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        self.starts.append(time.perf_counter())
        self.rss.append(rss_bytes())


class HookTimer:
    """Adds up the wall time spent inside the hooks of the given callbacks (their own work, which
    the noise of the machine does not blur the way it blurs whole-fit timings)."""

    def __init__(self, callbacks: list[Any]) -> None:
        self.seconds = 0.0
        for cb in callbacks:
            for name in dir(type(cb)):
                if name.startswith("on_") or name in ("setup", "teardown"):
                    hook = getattr(cb, name)
                    if callable(hook):
                        setattr(cb, name, self._timed(hook))

    def _timed(self, hook: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return hook(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


def data(steps_per_epoch: int, batch_size: int) -> tuple[DataLoader[Any], DataLoader[Any]]:
    g = torch.Generator().manual_seed(0)
    n = steps_per_epoch * batch_size
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 100, (n,), generator=g)
    train = TensorDataset(x, y)
    val = TensorDataset(x[: 4 * batch_size], y[: 4 * batch_size])
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(val, batch_size=batch_size)


def configurations() -> dict[str, Any]:
    """name -> a function that returns (callbacks, extra Trainer flags)."""
    configs: dict[str, Any] = {"bare": lambda: ([], {})}
    for name in presets.names():
        configs[f"preset:{name}"] = lambda name=name: (
            presets.callbacks(name), {k: v for k, v in presets.trainer_kwargs(name).items() if k != "callbacks"}
        )
    members = {cls for name in presets.names() for cls, _ in presets._MEMBERS[name]}
    for cls_name in sorted(members):
        args = {"seed": 0} if cls_name == "SeedEverything" else {}
        configs[cls_name] = lambda cls_name=cls_name, args=args: ([getattr(recipe_callbacks, cls_name)(**args)], {})
    return configs


def run_once(build: Any, steps_per_epoch: int, epochs: int, batch_size: int, root: str) -> dict[str, Any]:
    callbacks, flags = build()
    hooks = HookTimer(callbacks)
    timer = StepTimer()
    torch.manual_seed(0)
    model = BenchCNN()
    train, val = data(steps_per_epoch, batch_size)
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=epochs, logger=TensorBoardLogger(root, name="bench"),
        callbacks=[timer, *callbacks], enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, num_sanity_val_steps=0, **flags,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, train, val)
    total = time.perf_counter() - start
    intervals = [b - a for a, b in zip(timer.starts, timer.starts[1:], strict=False)]
    half = len(timer.rss) // 2
    growth = (timer.rss[-1] - timer.rss[half]) / max(1, len(timer.rss) - half) * 100 if timer.rss else 0
    cost_steps = sum(
        f.values.get("cost_steps", 0.0) for cb in callbacks if isinstance(cb, RecipeCallback) for f in cb.findings
    )
    steps = max(1, len(timer.starts))
    return {
        "total_s": total,
        "hook_s": hooks.seconds,
        "hook_ms_per_step": hooks.seconds / steps * 1000,
        "median_step_s": statistics.median(intervals),
        "peak_rss_delta_mb": (max(timer.rss) - timer.rss_start) / 2**20 if timer.rss else 0.0,
        "rss_growth_mb_per_100_steps": growth / 2**20,
        "stated_cost_steps": cost_steps,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300, help="training steps per fit (default 300)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs the steps are split into (default 3)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="repetitions of every configuration (default 3)")
    parser.add_argument("--only", default="", help="comma-separated configuration names (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, steadier timings)")
    parser.add_argument("--json", default="", help="also write the table as JSON to this path")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    configs = configurations()
    if args.only:
        configs = {k: v for k, v in configs.items() if k in args.only.split(",") or k == "bare"}
    steps_per_epoch = max(1, args.steps // args.epochs)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    with TemporaryDirectory() as root:
        for rep in range(args.repeats):
            for name, build in configs.items():
                results[name].append(run_once(build, steps_per_epoch, args.epochs, args.batch_size, root))
                print(f"rep {rep + 1}/{args.repeats} {name}: {results[name][-1]['total_s']:.1f} s", file=sys.stderr)
    bare_step = statistics.median(r["median_step_s"] for r in results["bare"])
    bare_total = statistics.median(r["total_s"] for r in results["bare"])
    table = []
    for name, runs in results.items():
        step = statistics.median(r["median_step_s"] for r in runs)
        total = statistics.median(r["total_s"] for r in runs)
        table.append({
            "configuration": name,
            "median_step_ms": step * 1000,
            "step_ratio": step / bare_step,
            "total_s": total,
            "total_ratio": total / bare_total,
            "extra_step_equivalents": (total - bare_total) / bare_step,
            "stated_cost_steps": statistics.median(r["stated_cost_steps"] for r in runs),
            "hook_s": statistics.median(r["hook_s"] for r in runs),
            "hook_share_of_bare": statistics.median(r["hook_s"] for r in runs) / bare_total,
            "peak_rss_delta_mb": max(r["peak_rss_delta_mb"] for r in runs),
            "rss_growth_mb_per_100_steps": statistics.median(r["rss_growth_mb_per_100_steps"] for r in runs),
        })
    header = f"{'configuration':28} {'step ms':>8} {'ratio':>6} {'total s':>8} {'ratio':>6} {'+steps':>7} " \
             f"{'stated':>7} {'hooks s':>8} {'hooks %':>8} {'peak MB':>8} {'MB/100st':>8}"
    print(header)
    for row in table:
        print(f"{row['configuration']:28} {row['median_step_ms']:8.2f} {row['step_ratio']:6.3f} {row['total_s']:8.2f} "
              f"{row['total_ratio']:6.3f} {row['extra_step_equivalents']:7.1f} {row['stated_cost_steps']:7.1f} "
              f"{row['hook_s']:8.2f} {100 * row['hook_share_of_bare']:7.2f}% "
              f"{row['peak_rss_delta_mb']:8.1f} {row['rss_growth_mb_per_100_steps']:8.2f}")
    if args.json:
        meta = {"steps": args.steps, "epochs": args.epochs, "batch_size": args.batch_size, "repeats": args.repeats,
                "threads": args.threads, "versions": recipe_callbacks.recipe_report.versions()}
        Path(args.json).write_text(json.dumps({"meta": meta, "table": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
