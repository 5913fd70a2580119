"""Overhead of the recipe callbacks against the bare Trainer, in one process run.

Two models: a tiny MLP (a step of a few milliseconds, where the callbacks' per-step Python work
is what counts) and a CNN of about 0.9M parameters on 3x32x32 inputs. Each trains with the bare
Trainer, with each preset and (tiny model) with each callback alone; the configurations alternate
within every repetition so that drift of the machine hits them all alike. Timings run on CUDA
when it is present, else on the CPU. For each configuration the table shows:

- ``step ms``: the median interval between consecutive training batches;
- ``hook us/step`` and ``hook %``: the time spent inside the callbacks' hooks during training
  steps (``on_train_batch_start`` ... ``on_train_batch_end``), as a mean over the steps from
  ``--warmup`` (100) on, sampled ones included, each step's time the minimum over the repetitions,
  and as a share of the bare median step (the `monitor` budget: 1% of a 5 ms step). Work a
  callback does inside the model's forward, through a forward hook, is not in it. ``one-off
  hook s`` is the rest: the first 100 steps, fit start, epoch ends, validation, fit end, and the
  once-per-fit work inside the window (below);
- the rule that separates the two: a hook call in which a callback reports a Finding
  (``RecipeCallback.report``, a verdict: it happens a bounded number of times per fit, whatever
  its length) or ``RecipeReport`` writes the checklist counts, whole, as once-per-fit work (the
  one-off column); every other hook call of a training step is recurring work and counts in
  ``hook us/step``: the unsampled steps, the sampled ones (records every N steps, histograms,
  histories, scalars, the looks of a one-off check that watches on) and anything else a hook does
  without giving a verdict. ``verdict s`` shows the once-per-fit seconds moved out of the window.
  Hooks a callback does not override (Lightning's empty ones) are not wrapped: calling them is part
  of Lightning's dispatch, printed below the table;
- ``syncs/step``: blocking device-to-host reads inside the callbacks' hooks per training step,
  the bare Trainer's own per step beside it (``bare syncs``), and ``sync steps``: how many
  training steps had any (all of them must be sampled steps). Counted on CUDA when present
  (patched ``.item()``, ``.cpu()``, ``.tolist()``, ``.numpy()``, ``bool()``/``float()``/``int()``
  of a CUDA tensor), else on the test suite's stand-in accelerator (tests/standin, a PrivateUse1
  device that counts every device-to-host copy and scalar read in C++). Data-dependent shapes
  (boolean-mask indexing, ``nonzero``) also sync on CUDA and are not counted;
- ``+fwd/step``: forward calls of the LightningModule per training step beyond the bare run's;
- ``+steps``: extra wall time of the whole fit over bare, in training-step equivalents (the
  one-off cost), and ``stated``: the one-off checks' own ``cost_steps`` as their Findings state
  it;
- ``peak x``: peak RSS during the fit over the bare run's (peak device memory on CUDA).

    make bench                                     # both models, about 5 minutes
    python benchmarks/overhead.py --json benchmarks/overhead.json
    python benchmarks/overhead.py --models tiny --only bare,preset:monitor --repeats 1   # a quick look

It also times Lightning's own call of a callback's hook (``_call_callback_hooks`` with empty
callbacks, ``lightning dispatch``): the price of every registered callback at every step hook,
before any of its code runs.
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
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import recipe_callbacks
from recipe_callbacks import RecipeCallback, presets
from recipe_callbacks.plumbing.callback_base import STEP_HOOKS
from recipe_callbacks.plumbing.hook_dispatch import dispatched_step_hooks, switch_off

ROOT = Path(__file__).resolve().parents[1]


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096


class Classifier(pl.LightningModule):
    """``(x, y)`` batches, cross-entropy, Adam; validation calls ``self(x)`` as most modules do."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

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


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def bench_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(128 * 8 * 8, 100),  # (N, 3, 32, 32) -> (N, 100)
    )


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    "tiny": (tiny_net, (32,), 10),
    "cnn": (bench_cnn, (3, 32, 32), 100),
}


def data(model: str, steps_per_epoch: int, batch_size: int) -> tuple[DataLoader[Any], DataLoader[Any]]:
    _, shape, classes = MODELS[model]
    g = torch.Generator().manual_seed(0)
    n = steps_per_epoch * batch_size
    x = torch.randn(n, *shape, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    train = TensorDataset(x, y)
    val = TensorDataset(x[: 4 * batch_size], y[: 4 * batch_size])
    return DataLoader(train, batch_size=batch_size, shuffle=True), DataLoader(val, batch_size=batch_size)


# ----------------------------------------------------------------------------- counting syncs
class SyncCounter:
    """Blocking device-to-host reads: the stand-in device's own counter, or patched tensor methods
    on CUDA (only calls on CUDA tensors count)."""

    PATCHED = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__")

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._patched_count = 0
        self._originals: dict[str, Any] = {}
        self._standin: Any = None
        if device.type == "cuda":
            for name in self.PATCHED:
                self._originals[name] = getattr(torch.Tensor, name)
                setattr(torch.Tensor, name, self._counting(self._originals[name]))
        else:
            sys.path.insert(0, str(ROOT))
            from tests import standin

            self._standin = standin

    def _counting(self, original: Any) -> Any:
        def counted(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            if tensor.is_cuda:
                self._patched_count += 1
            return original(tensor, *args, **kwargs)

        return counted

    def count(self) -> int:
        return self._standin.syncs() if self._standin is not None else self._patched_count


def counting_device() -> tuple[torch.device | None, str]:
    if torch.cuda.is_available():
        return torch.device("cuda"), "cuda"
    try:
        sys.path.insert(0, str(ROOT))
        from tests import standin

        return standin.device(), "standin"
    except Exception as err:  # no compiler: timings still run, the sync columns stay empty
        print(f"no device to count syncs on ({err!r}); sync columns left empty", file=sys.stderr)
        return None, ""


# ----------------------------------------------------------------------------- probes
class Verdicts:
    """Counts the once-per-fit events: a Finding reported (``RecipeCallback.report``), the checklist
    written (``RecipeReport.write``). A hook call in which the count moves is once-per-fit work."""

    count = 0
    _installed = False

    @classmethod
    def install(cls) -> None:
        if cls._installed:
            return
        cls._installed = True
        for owner, name in ((RecipeCallback, "report"), (recipe_callbacks.RecipeReport, "write")):
            original = getattr(owner, name)

            def counted(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
                cls.count += 1
                return __original(self, *args, **kwargs)

            setattr(owner, name, counted)


class Probe:
    """Wraps every hook of the given callbacks: time inside them (per-step hooks apart from the
    rest) and the syncs they make, with the training step each happened in."""

    def __init__(self, callbacks: list[Any], syncs: SyncCounter | None) -> None:
        self.step_seconds = 0.0
        self.other_seconds = 0.0
        self.verdict_seconds = 0.0  # step-hook calls that gave a verdict: once-per-fit work
        self.syncs_by_step: dict[int, int] = {}
        self.by_hook: dict[str, float] = {}
        self.by_step: dict[int, float] = {}
        self.by_callback: dict[str, dict[int, float]] = {}  # "Callback.hook" -> step -> recurring seconds
        self.step = -1
        self._syncs = syncs
        for cb in callbacks:
            for name in dir(type(cb)):
                # a hook the callback does not override is Lightning's empty one: calling it is
                # Lightning's dispatch, timed apart (lightning_dispatch_us)
                if (name.startswith("on_") or name in ("setup", "teardown")) and (
                    getattr(type(cb), name) is not getattr(pl.Callback, name, None)
                ):
                    hook = getattr(cb, name)
                    if callable(hook):
                        setattr(cb, name, self._wrap(name, hook, f"{type(cb).__name__}.{name}"))

    def _wrap(self, name: str, hook: Any, label: str) -> Any:
        per_step = name in STEP_HOOKS
        mine = self.by_callback.setdefault(label, {}) if per_step else {}

        def probed(*args: Any, **kwargs: Any) -> Any:
            before = self._syncs.count() if self._syncs is not None else 0
            verdicts = Verdicts.count
            start = time.perf_counter()
            try:
                return hook(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                self.by_hook[name] = self.by_hook.get(name, 0.0) + elapsed
                if per_step and Verdicts.count != verdicts:
                    self.verdict_seconds += elapsed
                elif per_step:
                    self.step_seconds += elapsed
                    self.by_step[self.step] = self.by_step.get(self.step, 0.0) + elapsed
                    mine[self.step] = mine.get(self.step, 0.0) + elapsed
                else:
                    self.other_seconds += elapsed
                if self._syncs is not None:
                    made = self._syncs.count() - before
                    if made and per_step:
                        self.syncs_by_step[self.step] = self.syncs_by_step.get(self.step, 0) + made

        return probed


class StepTimer(pl.Callback):
    """Placed first on the Trainer: times training batches, counts the run's syncs and forward
    calls per step, samples RSS."""

    def __init__(self, probe: Probe, syncs: SyncCounter | None) -> None:
        self.probe = probe
        self.syncs = syncs
        self.starts: list[float] = []
        self.rss: list[int] = []
        self.rss_start = 0
        self._forward_calls = [0]
        self.train_forwards = 0
        self.train_syncs = 0
        self._first: tuple[int, int] | None = None
        self._handle: Any = None
        self.dispatched: list[int] = []  # per step: the step hooks Lightning calls on the other callbacks
        self.registered = 0

    @property
    def forwards(self) -> int:
        return self._forward_calls[0]

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.rss_start = rss_bytes()
        calls = self._forward_calls

        def count(*_: Any) -> None:  # a plain function: a callback's copy of the model shares it
            calls[0] += 1

        self._handle = pl_module.register_forward_pre_hook(count)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        self.probe.step = len(self.starts)
        others = [cb for cb in trainer.callbacks if cb is not self]  # type: ignore[attr-defined]
        self.registered = len(others)
        self.dispatched.append(dispatched_step_hooks(others, STEP_HOOKS))
        if self._first is None:  # counting starts at the first step: fit-start work is one-off
            self._first = (self.forwards, self.syncs.count() if self.syncs is not None else 0)
        self.starts.append(time.perf_counter())
        self.rss.append(rss_bytes())

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._resume()

    def _pause(self) -> None:
        if self._first is not None:
            self.train_forwards += self.forwards - self._first[0]
            self.train_syncs += (self.syncs.count() if self.syncs is not None else 0) - self._first[1]
            self._first = None

    def _resume(self) -> None:
        if self.starts:
            self._first = (self.forwards, self.syncs.count() if self.syncs is not None else 0)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pause()
        if self._handle is not None:
            self._handle.remove()


# ----------------------------------------------------------------------------- configurations
def configurations(model: str) -> dict[str, Any]:
    """name -> a function that returns (callbacks, extra Trainer flags)."""
    configs: dict[str, Any] = {"bare": lambda: ([], {})}
    for name in presets.names():
        configs[f"preset:{name}"] = lambda name=name: (
            presets.callbacks(name),
            {k: v for k, v in presets.trainer_kwargs(name).items() if k != "callbacks"},
        )
    if model == "tiny":  # references: Lightning's empty Callback (the cost of being called) and LR monitor
        configs["lightning:Callback"] = lambda: ([pl.Callback()], {})
        configs["lightning:LearningRateMonitor"] = lambda: ([LearningRateMonitor()], {})
        members = {cls for name in presets.names() for cls, _ in presets._MEMBERS[name]}
        for cls_name in sorted(members):
            args = {"seed": 0} if cls_name == "SeedEverything" else {}
            configs[cls_name] = lambda cls_name=cls_name, args=args: (
                [getattr(recipe_callbacks, cls_name)(**args)], {}
            )
    return configs


def run_once(model_name: str, build: Any, device: torch.device, syncs: SyncCounter | None, steps_per_epoch: int,
             epochs: int, batch_size: int, root: str) -> dict[str, Any]:
    callbacks, flags = build()
    probe = Probe(callbacks, syncs)
    timer = StepTimer(probe, syncs)
    torch.manual_seed(0)
    model = Classifier(MODELS[model_name][0]())
    train, val = data(model_name, steps_per_epoch, batch_size)
    if device.type == "standin":
        from tests import standin

        placement: dict[str, Any] = standin.trainer_flags()
    else:
        placement = {"accelerator": device.type, "devices": 1}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    logger = TensorBoardLogger(root, name="bench")
    # The event writer is created by the first scalar anyone logs (~0.1 s): create it here, so that
    # it is not charged to whichever callback logs first (the bare run pays it at step 50).
    _ = logger.experiment
    trainer = pl.Trainer(
        **placement, max_epochs=epochs, logger=logger,
        callbacks=[timer, *callbacks], enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, num_sanity_val_steps=0, **flags,
    )
    start = time.perf_counter()
    with warnings.catch_warnings(), open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        warnings.simplefilter("ignore")  # and the recipe report's console print: the table is the output
        trainer.fit(model, train, val)
    total = time.perf_counter() - start
    intervals = [b - a for a, b in zip(timer.starts, timer.starts[1:], strict=False)]
    steps = max(1, len(timer.starts))
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else max(timer.rss, default=timer.rss_start))
    return {
        "total_s": total,
        "median_step_s": statistics.median(intervals) if intervals else total,
        "hook_us_per_step": probe.step_seconds / steps * 1e6,
        "other_hook_s": probe.other_seconds,
        "verdict_hook_s": probe.verdict_seconds,
        "syncs_per_step": sum(probe.syncs_by_step.values()) / steps,
        "sync_steps": len(probe.syncs_by_step),
        "run_syncs_per_step": timer.train_syncs / steps,
        "forwards_per_step": timer.train_forwards / steps,
        "steps": steps,
        "hook_s_by_name": probe.by_hook,
        "hook_s_by_step": probe.by_step,
        "hook_s_by_callback": probe.by_callback,
        "dispatched_by_step": timer.dispatched,
        "registered_callbacks": timer.registered,
        "peak_bytes": peak,
        "stated_cost_steps": sum(
            f.values.get("cost_steps", 0.0) for cb in callbacks if isinstance(cb, RecipeCallback)
            for f in cb.findings
        ),
    }


def steady_by_callback(runs: list[dict[str, Any]], warmup: int) -> dict[str, float]:
    """``"Callback.hook" -> us/step`` of recurring work over the window (each step the minimum over the
    repetitions, as :func:`steady_hook_us`), for ``--details``."""
    steps = min(r["steps"] for r in runs)
    start = min(warmup, steps // 2)
    out = {}
    for label in runs[0]["hook_s_by_callback"]:
        total = sum(min(r["hook_s_by_callback"][label].get(i, 0.0) for r in runs) for i in range(start, steps))
        out[label] = total / max(1, steps - start) * 1e6
    return out


def steady_dispatched(per_step: list[int], warmup: int) -> float:
    """Mean number of step hooks Lightning called on the callbacks per step, over the steps from
    ``warmup`` on (the same in every repetition: it follows the callbacks' state, not the clock)."""
    window = per_step[min(warmup, len(per_step) // 2):]
    return sum(window) / max(1, len(window))


def steady_hook_us(runs: list[dict[str, Any]], warmup: int) -> tuple[float, float]:
    """Mean hook time per step over the steps from ``warmup`` on (sampled steps included), and the
    seconds spent in the hooks of the first ``warmup`` steps (one-off work such as a first-batch
    check or a verdict after 30 steps). Each step's time is the minimum over the repetitions: the
    work a callback does at a step recurs at that step in every repetition, while a pause of the
    shared machine (another process scheduled in the middle of a hook) rarely hits the same step twice."""
    steps = min(r["steps"] for r in runs)
    per_step = [min(r["hook_s_by_step"].get(i, 0.0) for r in runs) for i in range(steps)]
    start = min(warmup, steps // 2)
    return sum(per_step[start:]) / max(1, steps - start) * 1e6, sum(per_step[:start])


def measure(model: str, configs: dict[str, Any], args: argparse.Namespace, root: str, device: torch.device,
            count_on: torch.device | None) -> list[dict[str, Any]]:
    steps = args.steps if model == "tiny" else args.cnn_steps
    repeats = args.repeats if model == "tiny" else 1
    steps_per_epoch = max(1, steps // args.epochs)
    timed: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
    for rep in range(repeats):
        for name, build in configs.items():
            timed[name].append(run_once(model, build, device, None, steps_per_epoch, args.epochs, args.batch_size,
                                        root))
            print(f"{model} rep {rep + 1}/{repeats} {name}: {timed[name][-1]['total_s']:.1f} s", file=sys.stderr)
    counted: dict[str, dict[str, Any]] = {}
    if count_on is not None:
        syncs = SyncCounter(count_on)
        for name, build in configs.items():
            counted[name] = run_once(model, build, count_on, syncs, steps_per_epoch, args.epochs, args.batch_size,
                                     root)
            print(f"{model} counting on {count_on.type} {name}: {counted[name]['total_s']:.1f} s", file=sys.stderr)
    bare_step = statistics.median(r["median_step_s"] for r in timed["bare"])
    bare_total = statistics.median(r["total_s"] for r in timed["bare"])
    bare_peak = max(r["peak_bytes"] for r in timed["bare"])
    table = []
    for name, runs in timed.items():
        hook_us, warmup_s = steady_hook_us(runs, args.warmup)
        total = statistics.median(r["total_s"] for r in runs)
        row: dict[str, Any] = {
            "model": model,
            "configuration": name,
            "median_step_ms": statistics.median(r["median_step_s"] for r in runs) * 1000,
            "hook_us_per_step": hook_us,
            "hook_us_per_step_raw_mean": statistics.median(r["hook_us_per_step"] for r in runs),
            "hook_share_of_bare_step": hook_us / 1e6 / bare_step,
            "one_off_hook_s": warmup_s + statistics.median(r["other_hook_s"] + r["verdict_hook_s"] for r in runs),
            "verdict_hook_s": statistics.median(r["verdict_hook_s"] for r in runs),
            "hook_us_by_callback": steady_by_callback(runs, args.warmup),
            "registered_callbacks": runs[0]["registered_callbacks"],
            "dispatched_step_hooks_per_step": steady_dispatched(runs[0]["dispatched_by_step"], args.warmup),
            "extra_step_equivalents": (total - bare_total) / bare_step,
            "stated_cost_steps": statistics.median(r["stated_cost_steps"] for r in runs),
            "peak_memory_ratio": max(r["peak_bytes"] for r in runs) / bare_peak,
        }
        if name in counted:
            c = counted[name]
            row.update({
                "syncs_per_step": c["syncs_per_step"],
                "sync_steps": c["sync_steps"],
                "counted_steps": c["steps"],
                "bare_syncs_per_step": counted["bare"]["run_syncs_per_step"],
                "run_syncs_per_step": c["run_syncs_per_step"],
                "extra_forwards_per_step": c["forwards_per_step"] - counted["bare"]["forwards_per_step"],
            })
        table.append(row)
    return table


def lightning_dispatch_us(callbacks: int = 10, calls: int = 20_000, repeats: int = 5) -> tuple[float, float]:
    """Lightning's own cost, in microseconds, of one hook of one registered callback: called (the loop
    of ``_call_callback_hooks``: ``getattr``, the profiler's context, the ``state_key`` in its name,
    and the call of an empty hook) and switched off (``None`` on the instance: the ``getattr`` and
    ``callable`` only, see ``recipe_callbacks.plumbing.hook_dispatch``), from ``callbacks`` callbacks
    against none (the best of ``repeats``)."""
    from lightning.pytorch.trainer import call

    def seconds(n: int, off: bool = False) -> float:
        cbs = [pl.Callback() for _ in range(n)]
        if off:
            for cb in cbs:
                switch_off(cb, ["on_before_zero_grad"])
        trainer = pl.Trainer(callbacks=cbs, logger=False, enable_progress_bar=False,
                             enable_model_summary=False, enable_checkpointing=False)
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                call._call_callback_hooks(trainer, "on_before_zero_grad", None)
            best = min(best, time.perf_counter() - start)
        return best

    none = seconds(0)
    return ((seconds(callbacks) - none) / (calls * callbacks) * 1e6,
            max(0.0, seconds(callbacks, off=True) - none) / (calls * callbacks) * 1e6)


def print_dispatch(table: list[dict[str, Any]], called_us: float, skipped_us: float) -> None:
    """Each configuration's hook time with Lightning's dispatch of its callbacks added: the whole
    per-step price against the ``monitor`` budget (1% of a 5 ms step, 50 us)."""
    print(f"\nlightning dispatch: {called_us:.2f} us per called hook, {skipped_us:.3f} us per switched-off hook "
          f"({len(STEP_HOOKS)} step hooks per registered callback)")
    print(f"{'model':5} {'configuration':29} {'hook us':>8} {'callbacks':>9} {'called/step':>11} {'dispatch us':>11} "
          f"{'total us':>9} {'of 5 ms':>8} {'of bare':>8}")
    for row in table:
        called = row["dispatched_step_hooks_per_step"]
        skipped = row["registered_callbacks"] * len(STEP_HOOKS) - called
        row["dispatch_us_per_step"] = called * called_us + skipped * skipped_us
        row["total_us_per_step"] = row["hook_us_per_step"] + row["dispatch_us_per_step"]
        bare_ms = next(r["median_step_ms"] for r in table
                       if r["model"] == row["model"] and r["configuration"] == "bare")
        print(f"{row['model']:5} {row['configuration']:29} {row['hook_us_per_step']:8.1f} "
              f"{row['registered_callbacks']:9d} {called:11.1f} {row['dispatch_us_per_step']:11.1f} "
              f"{row['total_us_per_step']:9.1f} {row['total_us_per_step'] / 50:7.2f}% "
              f"{row['total_us_per_step'] / 10 / bare_ms:7.2f}%")


def print_table(table: list[dict[str, Any]], device: str, counted_on: str) -> None:
    print(f"\ntimings on {device}; syncs and forwards counted on {counted_on or 'nothing'}")
    header = (f"{'model':5} {'configuration':29} {'step ms':>7} {'hook us/step':>12} {'hook %':>7} "
              f"{'one-off hook s':>13} {'verdict s':>9} {'syncs/step':>10} {'bare syncs':>10} {'sync steps':>10} "
              f"{'+fwd/step':>9} "
              f"{'+steps':>7} {'stated':>7} {'peak x':>6}")
    print(header)
    for row in table:
        if "syncs_per_step" in row:
            counts = (f"{row['syncs_per_step']:10.3f} {row['bare_syncs_per_step']:10.3f} "
                      f"{row['sync_steps']:>4}/{row['counted_steps']:<5} {row['extra_forwards_per_step']:9.3f}")
        else:
            counts = f"{'-':>10} {'-':>10} {'-':>10} {'-':>9}"
        print(f"{row['model']:5} {row['configuration']:29} {row['median_step_ms']:7.2f} "
              f"{row['hook_us_per_step']:12.1f} "
              f"{100 * row['hook_share_of_bare_step']:6.2f}% {row['one_off_hook_s']:13.2f} "
              f"{row['verdict_hook_s']:9.3f} {counts} "
              f"{row['extra_step_equivalents']:7.1f} {row['stated_cost_steps']:7.1f} {row['peak_memory_ratio']:6.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,cnn", help="comma-separated: tiny, cnn (default both)")
    parser.add_argument("--steps", type=int, default=300, help="training steps per fit, tiny model (default 300)")
    parser.add_argument("--cnn-steps", type=int, default=100, help="training steps per fit, CNN (default 100)")
    parser.add_argument("--warmup", type=int, default=100,
                        help="steps before the steady per-step hook time is measured (default 100)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs the steps are split into (default 2)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="repetitions on the tiny model (default 3; CNN 1)")
    parser.add_argument("--only", default="", help="comma-separated configuration names (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, steadier timings)")
    parser.add_argument("--no-count", action="store_true", help="skip the sync and forward counting runs")
    parser.add_argument("--details", action="store_true", help="print each callback hook's us/step too")
    parser.add_argument("--json", default="", help="also write the table as JSON to this path")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    Verdicts.install()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    count_on, counted_on = (None, "") if args.no_count else counting_device()
    table: list[dict[str, Any]] = []
    with TemporaryDirectory() as root:
        for model in args.models.split(","):
            configs = configurations(model)
            if args.only:
                configs = {k: v for k, v in configs.items() if k in args.only.split(",") or k == "bare"}
            table += measure(model, configs, args, root, device, count_on)
    print_table(table, device.type, counted_on)
    if args.details:
        for row in table:
            shown = {k: v for k, v in row["hook_us_by_callback"].items() if v >= 0.05}
            print(f"{row['model']} {row['configuration']}: " + ", ".join(
                f"{k} {v:.1f}" for k, v in sorted(shown.items(), key=lambda kv: -kv[1])))
    called_us, skipped_us = lightning_dispatch_us()
    print_dispatch(table, called_us, skipped_us)
    if args.json:
        meta = {"lightning_dispatch_us": called_us, "lightning_switched_off_us": skipped_us,
                "steps": args.steps, "cnn_steps": args.cnn_steps, "warmup": args.warmup, "epochs": args.epochs,
                "batch_size": args.batch_size, "repeats": args.repeats, "threads": args.threads,
                "device": device.type, "counted_on": counted_on,
                "versions": recipe_callbacks.recipe_report.versions()}
        Path(args.json).write_text(json.dumps({"meta": meta, "table": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
