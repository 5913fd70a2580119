"""Measured one-off cost of the ``skeleton`` preset on the real-model zoo (``tests/zoo``).

For every family: each check's stated ``cost_steps`` (from its Findings) next to the cost
measured here from outside the check (the wall time spent in its hooks beyond its steady per-batch
share, over the median training step of the same run, both timed by this script), their sum
against the budget (50 training-step equivalents plus one validation pass: FullEvalSet's pass is
that validation pass and is shown, not counted), and the verdicts.

The pictures are drawn in the drawing process beside training (``recipe_callbacks.core.drawing``),
so a check's hooks no longer hold them; what a fit still waits for at its end (a short fit ends
before the drawing process is through) is shown apart, as "waited at fit end". And, to see every
cost at once (the validation pass, the drawing process's share of the machine, that wait): the
whole fit's wall time against a bare fit of the same family (same Trainer flags, no callbacks),
in the bare fit's median steps ("fit over bare").

    python benchmarks/zoo_cost.py                     # the language models and the ResNet
    python benchmarks/zoo_cost.py --family hf_vit     # another family (repeatable)
    python benchmarks/zoo_cost.py --all --repeats 3   # every family, the median of three fits
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipe_callbacks import RecipeCallback, RecipeWarning, presets
from recipe_callbacks.core.cost import StepClock
from recipe_callbacks.plumbing import log_writer
from tests.zoo.families import FAMILIES, build

DEFAULT_FAMILIES = ("hf_gpt2", "nanogpt", "lstm_lm", "hf_resnet")
BUDGET = 50.0
WINDOW = StepClock().intervals  # the intervals the checks time their median step over
VALIDATION_PASS = "FullEvalSet"  # its pass over the validation set at fit start is the budget's validation pass


class StepTimer(pl.Callback):
    """The intervals between the starts of consecutive training batches (the first left out), the
    first 32 of them: the window the checks' own step clock times (``core.cost.StepClock``), so that
    stated and measured costs divide by the median of the same steps (the first steps of a fit are
    slower while the drawing process starts beside them, so a longer window gives a shorter median)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        self.starts.append(time.perf_counter())

    def median_step(self) -> float:
        steps = [b - a for a, b in zip(self.starts[1:], self.starts[2:], strict=False)][:WINDOW]
        return statistics.median(steps) if steps else float("nan")


class DrawingWatch:
    """Counts the pictures asked for and times the waits for the drawing process at fit end."""

    def __init__(self) -> None:
        self.pictures = 0
        self.waited = 0.0
        self._chart, self._settle = log_writer.log_chart, log_writer.settle

    def __enter__(self) -> DrawingWatch:
        def chart(*args: Any, **kwargs: Any) -> None:
            self.pictures += 1
            self._chart(*args, **kwargs)

        def settle(wait: bool = False, timeout: float = 120.0) -> None:
            start = time.perf_counter()
            try:
                self._settle(wait, timeout)
            finally:
                if wait:
                    self.waited += time.perf_counter() - start

        log_writer.log_chart, log_writer.settle = chart, settle  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        log_writer.log_chart, log_writer.settle = self._chart, self._settle  # type: ignore[assignment]


def _timed(cb: RecipeCallback, timer: StepTimer, spent: dict[str, dict[int, float]], watch: DrawingWatch) -> None:
    """Wrap every hook of ``cb`` so its time adds to ``spent[name][batch]`` (the training batch
    under way, -1 before the first)."""
    name = type(cb).__name__
    for attr in dir(type(cb)):
        if not attr.startswith("on_") and attr not in ("setup", "teardown"):
            continue
        hook = getattr(cb, attr)
        if not callable(hook):
            continue

        def wrapped(*args: Any, _hook: Callable[..., Any] = hook, **kwargs: Any) -> Any:
            start, waited = time.perf_counter(), watch.waited
            try:
                return _hook(*args, **kwargs)
            finally:
                per_batch = spent.setdefault(name, {})
                i = len(timer.starts) - 1
                own = time.perf_counter() - start - (watch.waited - waited)  # the fit-end wait is shown apart
                per_batch[i] = per_batch.get(i, 0.0) + own

        setattr(cb, attr, wraps(hook)(wrapped))


def one_off_seconds(per_batch: dict[int, float]) -> float:
    """The time of a callback's hooks beyond its steady per-batch share: the total less the median
    batch's time for every batch."""
    steady = [t for i, t in per_batch.items() if i >= 1]
    batches = [i for i in per_batch if i >= 0]
    return sum(per_batch.values()) - (statistics.median(steady) if steady else 0.0) * len(batches)


def _fit(family: str, callbacks: list[pl.Callback], kwargs: dict[str, Any], max_epochs: int | None, root: str) -> float:
    """One fit of ``family`` with ``callbacks`` and a TensorBoardLogger; its wall time in seconds."""
    case = build(family)
    train, val = case.loaders()
    trainer = pl.Trainer(
        **kwargs, callbacks=callbacks, accelerator="cpu", devices=1, max_epochs=max_epochs or case.max_epochs,
        logger=TensorBoardLogger(root, name=family), enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, **case.trainer_kwargs,
    )
    start = time.perf_counter()
    trainer.fit(case.module, train, val)
    return time.perf_counter() - start


def measure(family: str, max_epochs: int | None = None) -> dict[str, Any]:
    """A bare fit and a skeleton fit of ``family``; per one-off check: stated cost_steps, measured,
    verdicts; the fit-end wait for pictures; the skeleton fit's wall time over the bare one."""
    timer, bare_timer = StepTimer(), StepTimer()
    spent: dict[str, dict[int, float]] = {}
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings(), DrawingWatch() as watch:
        warnings.simplefilter("ignore")
        kwargs = presets.trainer_kwargs("skeleton")
        callbacks = [timer, *kwargs.pop("callbacks", [])]
        for cb in callbacks:
            if type(cb).__name__ == "RecipeReport":
                cb.print_report = False  # type: ignore[attr-defined]
            elif isinstance(cb, RecipeCallback):
                _timed(cb, timer, spent, watch)
        bare_seconds = _fit(family, [bare_timer], kwargs, max_epochs, root)
        seconds = _fit(family, callbacks, kwargs, max_epochs, root)
    step, bare_step = timer.median_step(), bare_timer.median_step()
    rows = []
    for cb in callbacks:
        if not isinstance(cb, RecipeCallback) or type(cb).__name__ == "RecipeReport":
            continue
        name = type(cb).__name__
        stated = sum(v for f in cb.findings for k, v in f.values.items() if k.endswith("cost_steps") and v == v)
        own = sum(v for f in cb.findings for k, v in f.values.items() if k.endswith("cost_seconds") and v == v)
        rows.append({
            "check": name, "stated": stated, "seconds": own,
            "measured": one_off_seconds(spent.get(name, {})) / step,
            "verdicts": "/".join(f.status for f in cb.findings) or "-",
        })
    return {"family": family, "step": step, "rows": rows, "pictures": watch.pictures, "waited": watch.waited / step,
            "over_bare": (seconds - bare_seconds) / bare_step, "bare_step": bare_step}


def combined(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of every figure over repeated fits of one family (the machine's load varies)."""
    first = results[0]
    rows = []
    for i, row in enumerate(first["rows"]):
        same = [r["rows"][i] for r in results]
        rows.append({**row, **{k: statistics.median(r[k] for r in same) for k in ("stated", "measured", "seconds")}})
    return {"family": first["family"], "rows": rows, **{
        k: statistics.median(r[k] for r in results) for k in ("step", "pictures", "waited", "over_bare", "bare_step")
    }}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", action="append", choices=sorted(FAMILIES))
    parser.add_argument("--all", action="store_true", help="every zoo family")
    parser.add_argument("--max-epochs", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=1, help="fits per family; each figure is the median")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", RecipeWarning)
    families = list(FAMILIES) if args.all else args.family or list(DEFAULT_FAMILIES)
    over = []
    for family in families:
        result = combined([measure(family, args.max_epochs) for _ in range(args.repeats)])
        rows = result["rows"]
        counted = [r for r in rows if r["check"] != VALIDATION_PASS]
        total = sum(r["stated"] for r in counted)
        measured = sum(r["measured"] for r in counted)
        print(f"\n{family}: median step {result['step'] * 1e3:.1f} ms; skeleton one-off cost_steps stated "
              f"{total:.1f}, measured {measured:.1f} (budget {BUDGET:g} + one validation pass)")
        print(f"  {'check':28s} {'stated':>7s} {'measured':>9s} {'seconds':>8s}  verdicts")
        for r in rows:
            if r["stated"] < 0.5 and r["measured"] < 0.5:
                continue
            note = "  (the validation pass, not counted)" if r["check"] == VALIDATION_PASS else ""
            print(f"  {r['check']:28s} {r['stated']:7.1f} {r['measured']:9.1f} {r['seconds']:8.3f}  "
                  f"{r['verdicts']}{note}")
        print(f"  {result['pictures']:.0f} pictures drawn beside training; waited at fit end "
              f"{result['waited']:.1f} steps; fit over bare {result['over_bare']:.1f} bare steps "
              f"(bare median step {result['bare_step'] * 1e3:.1f} ms; includes the validation pass)")
        if total > BUDGET:
            over.append(family)
    print(f"\nover budget: {over or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
