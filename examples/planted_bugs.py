"""Every planted bug of the recipe, switched on one at a time, and the check that catches it.

Each scenario takes the digits demo (``examples/digits.py``; the character-level LM of
``examples/char_lm.py`` for the causal leak, the 1:9 task of ``examples/imbalanced_fix_bias.py``
for the bias at init), plants one silent bug of the recipe (each one is named in
``docs/recipe.md``), trains a few steps with only the check that is meant to catch it
(``on_fail="ignore"``: the Findings are only recorded) and prints what that check said. The
``control`` rows run the healthy models through the same checks: they must pass, so a reader sees
that the checks do not cry wolf.

    python examples/planted_bugs.py              # every scenario, a table, exit 1 if one is missed
    python examples/planted_bugs.py --list       # the scenario names
    python examples/planted_bugs.py --only lr_zero --log-dir /tmp/bugs
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import recipe_callbacks as rc
from examples.char_lm import CharTransformer, CharWindows
from examples.digits import DigitsCNN, digits_datasets
from examples.imbalanced_fix_bias import ZeroDetector, zero_vs_rest
from recipe_callbacks import Finding, RecipeCallback
from recipe_callbacks.plumbing.callback_base import snake_case

_SEVERITY = {"fail": 3, "warn": 2, "pass": 1, "skip": 0}


# --------------------------------------------------------------------------- results
@dataclass
class Result:
    """What the expected check said about one scenario."""

    name: str
    bug: str
    step: str
    check: str
    planted: bool  # False for a healthy control row
    statuses: list[str]
    summary: str
    seconds: float = 0.0
    shown: bool | None = None  # see Outcome.shown

    @property
    def caught(self) -> bool:
        """The expected check reported ``warn`` or ``fail``."""
        return any(s in ("warn", "fail") for s in self.statuses)

    @property
    def ok(self) -> bool:
        """A planted bug was caught (or shown by the check's exact figure); a healthy control passed
        (at least one ``pass``, no warn/fail)."""
        if self.planted:
            return self.caught or bool(self.shown)
        return "pass" in self.statuses and not self.caught

    @property
    def verdict(self) -> str:
        """``CAUGHT``, ``SHOWN`` or ``MISSED`` for a planted bug, ``ok`` or ``NOISY`` for a control."""
        if not self.planted:
            return "ok" if self.ok else "NOISY"
        return "CAUGHT" if self.caught else ("SHOWN" if self.shown else "MISSED")

    @property
    def status(self) -> str:
        """The most severe status reported (``none`` when the check reported nothing)."""
        return max(self.statuses, key=_SEVERITY.__getitem__) if self.statuses else "none"


@dataclass
class Outcome:
    """What a scenario's run hands back: the Findings of its checks and a note for the table.

    ``shown`` is for a bug no check can flag from outside the user's code (a metric the user
    averages wrongly): true when the check's own exact figure disagrees with the buggy one.
    """

    findings: list[Finding]
    note: str = ""
    shown: bool | None = None


@dataclass(frozen=True)
class Scenario:
    """One planted bug (or one healthy control) and how to run it."""

    name: str
    bug: str
    step: str
    check: str
    run: Callable[[_Context], Outcome]
    planted: bool = True
    match: str = ""  # only the check's Findings whose summary contains this count


@dataclass
class _Context:
    log_dir: str
    cache: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- shared plumbing
@lru_cache(maxsize=1)
def _digits() -> tuple[TensorDataset, TensorDataset]:
    return digits_datasets(seed=0)


def _tensors(dataset: TensorDataset) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = dataset.tensors
    return x.clone(), y.clone()


def _loader(dataset: Dataset[Any], batch_size: int = 32, shuffle: bool = True, **kw: Any) -> DataLoader[Any]:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, **kw)


def _fit(
    ctx: _Context,
    name: str,
    model: pl.LightningModule,
    callbacks: list[Any],
    train: DataLoader[Any],
    val: DataLoader[Any] | None = None,
    **trainer_kwargs: Any,
) -> pl.Trainer:
    """A short CPU run logging to ``<log_dir>/<name>``."""
    kwargs: dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        max_steps=8,
        max_epochs=-1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        log_every_n_steps=1,
        logger=TensorBoardLogger(ctx.log_dir, name=name, version=""),
    )
    if val is None:
        kwargs["limit_val_batches"] = 0
    kwargs.update(trainer_kwargs)
    trainer = pl.Trainer(callbacks=callbacks, **kwargs)
    trainer.fit(model, train, val)
    return trainer


def _seeded_digits_cnn(**kw: Any) -> DigitsCNN:
    pl.seed_everything(0, workers=True, verbose=False)
    return DigitsCNN(**kw)


def _one(
    check: Callable[[], RecipeCallback],
    make_model: Callable[[], pl.LightningModule] = _seeded_digits_cnn,
    train: Callable[[], DataLoader[Any]] | None = None,
    val: Callable[[], DataLoader[Any]] | None = None,
    **trainer_kwargs: Any,
) -> Callable[[_Context], Outcome]:
    """A scenario run: the model, the data and one check, a short fit, the check's Findings."""

    def run(ctx: _Context) -> Outcome:
        callback = check()
        model = make_model()
        train_loader = train() if train is not None else _loader(_digits()[0])
        val_loader = val() if val is not None else None
        _fit(ctx, ctx.cache["name"], model, [callback], train_loader, val_loader, **trainer_kwargs)
        return Outcome(callback.findings)

    return run


# --------------------------------------------------------------------------- planted models
class IgnoresInput(DigitsCNN):
    """Bug: ``forward`` computes features and then throws them away (the head sees zeros)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).flatten(1)  # (N, C*4*4)
        return self.head(torch.zeros_like(h))


class WrongSignLoss(DigitsCNN):
    """Bug: the loss is minus the cross-entropy; minimising it pushes the right class down."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return -nn.functional.cross_entropy(self(x), y)


class MixesSamples(DigitsCNN):
    """Bug: a reshape that puts channels where the batch dim was, so samples leak into each other."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # (N, C, 4, 4)
        n = h.shape[0]
        mixed = h.transpose(0, 1).reshape(n, -1)  # wrong: (C, N, 4, 4) read as (N, C*16)
        return self.head(mixed)


class WithScheduler(DigitsCNN):
    """The demo with a learning-rate schedule, returned as ``configure_optimizers`` gives it."""

    def __init__(self, schedule: str) -> None:
        super().__init__()
        self.schedule = schedule

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.parameters(), lr=3e-3)
        if self.schedule == "step_decay":  # copied from an ImageNet recipe: /10 every few epochs
            sched: Any = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
        if self.schedule == "cosine_epochs_per_step":  # T_max in epochs, stepped every batch
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if self.schedule == "interval_top_level":  # interval beside lr_scheduler: Lightning ignores it
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=10)  # the run's 10 steps
            return {"optimizer": opt, "lr_scheduler": sched, "interval": "step"}
        if self.schedule == "onecycle_other_run":  # total_steps copied from a longer run
            sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=1000)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        if self.schedule == "exponential_fast":  # gamma meant per epoch, stepped per step: ~0 in 5 steps
            sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.3)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
        return opt


class SGDMomentum(DigitsCNN):
    """The demo with SGD and momentum 0.9 (Adam's normalised steps hide a too-high rate less well)."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams["lr"], momentum=0.9)


class CountsBatchMeans(DigitsCNN):
    """Bug: validation accuracy as the mean of per-batch means, so a short last batch weighs as much
    as a full one."""

    batch_accs: list[float]
    batch_mean_acc: float = float("nan")

    def on_validation_epoch_start(self) -> None:
        self.batch_accs = []

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.batch_accs.append(float((self(x).argmax(1) == y).float().mean()))

    def on_validation_epoch_end(self) -> None:
        self.batch_mean_acc = sum(self.batch_accs) / len(self.batch_accs)


def _frozen(model: DigitsCNN, *names: str) -> DigitsCNN:
    """Bug: layers left frozen, e.g. by a fine-tuning script's ``requires_grad_(False)``."""
    for name in names:
        model.get_submodule(name).requires_grad_(False)
    return model


def _large_head() -> DigitsCNN:
    model = _seeded_digits_cnn()
    with torch.no_grad():
        model.head.weight.mul_(50.0)  # a final layer initialised far too large
    return model


def _dead_relus() -> DigitsCNN:
    model = _seeded_digits_cnn()
    with torch.no_grad():
        model.features[0].bias.fill_(-100.0)  # every unit of the first ReLU is off for every input
    return model


def _frozen_first_filters() -> DigitsCNN:
    # The demo's first conv is 5x5, large enough to be judged (min_kernel_size=16).
    return _frozen(_seeded_digits_cnn(), "features.0")  # still the random init after training: noise


class UnusedBranch(DigitsCNN):
    """Bug: an auxiliary head is computed and never reaches the loss (its result is dropped)."""

    def __init__(self) -> None:
        super().__init__()
        self.aux_head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).flatten(1)
        _ = self.aux_head(h)  # meant to be added to the logits
        return self.head(h)


class DetachedFeatures(DigitsCNN):
    """Bug: ``detach()`` after the conv features, so the convolutions never learn."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).flatten(1).detach())


class NeverZeroGrad(DigitsCNN):
    """Bug: manual optimization without ``zero_grad``: the gradients grow across steps."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.manual_backward(loss)
        self.optimizers().step()  # type: ignore[union-attr]
        return loss


class FunctionalDropout(DigitsCNN):
    """Bug: ``F.dropout(h, 0.3)`` defaults to ``training=True``: dropout stays on in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(nn.functional.dropout(self.features(x).flatten(1), 0.3))


class BatchNormDigits(DigitsCNN):
    """The demo with BatchNorm after each conv."""

    def __init__(self, momentum: float | None = 0.1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2), nn.BatchNorm2d(16, momentum=momentum), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16, momentum=momentum), nn.ReLU(), nn.MaxPool2d(2),
        )


class SoftmaxForward(DigitsCNN):
    """Bug: ``forward`` returns probabilities and ``training_step`` feeds them to cross-entropy."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(super().forward(x), dim=1)


class SigmoidZeroDetector(ZeroDetector):
    """Bug: ``forward`` returns a sigmoid and the loss is BCE-with-logits (a second sigmoid)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(super().forward(x))


class DigitValueRegressor(DigitsCNN):
    """Regress the digit's value: one output ``(N, 1)``; the bug compares it with a ``(N,)`` target."""

    def __init__(self, squeeze: bool = False) -> None:
        super().__init__()
        self.head = nn.Linear(16 * 4 * 4, 1)
        self.squeeze = squeeze

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out = self(x)  # (N, 1)
        return nn.functional.mse_loss(out.squeeze(-1) if self.squeeze else out, y.float())  # bug: (N, N)


class OneHotMSE(DigitsCNN):
    """Bug: one-hot targets and a regression loss on the logits."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x), y)


def _seeded_bn(momentum: float | None) -> BatchNormDigits:
    pl.seed_everything(0, workers=True, verbose=False)
    return BatchNormDigits(momentum)


def _seeded_sigmoid_detector() -> SigmoidZeroDetector:
    pl.seed_everything(0, workers=True, verbose=False)
    return SigmoidZeroDetector()


# --------------------------------------------------------------------------- planted data
def _dataset(x: torch.Tensor, y: torch.Tensor) -> TensorDataset:
    return TensorDataset(x, y)


def _one_class_train() -> DataLoader[Any]:
    x, y = _tensors(_digits()[0])
    return _loader(_dataset(x, torch.zeros_like(y)))  # a label column read from the wrong place


def _val_with_train_copies() -> DataLoader[Any]:
    (xt, yt), (xv, yv) = _tensors(_digits()[0]), _tensors(_digits()[1])
    return _loader(_dataset(torch.cat([xv, xt[:100]]), torch.cat([yv, yt[:100]])), 256, shuffle=False)


def _val(batch_size: int = 256, **kw: Any) -> Callable[[], DataLoader[Any]]:
    return lambda: _loader(_digits()[1], batch_size, shuffle=False, **kw)


def _zeros_train() -> DataLoader[Any]:
    x, y = _tensors(_digits()[0])
    return _loader(_dataset(torch.zeros_like(x), y))  # e.g. a transform that multiplies by a 0 mask


def _raw_pixels_train() -> DataLoader[Any]:
    x, y = _tensors(_digits()[0])
    return _loader(_dataset(x * 255.0, y))  # 0..255 instead of 0..1


def _nan_train() -> DataLoader[Any]:
    x, y = _tensors(_digits()[0])
    x[0, 0, 3, 3] = float("nan")  # one corrupt pixel in the first sample
    return _loader(_dataset(x, y), shuffle=False)


def _imbalanced_train() -> DataLoader[Any]:
    return _loader(zero_vs_rest(), 128)


def _digit_value_train() -> DataLoader[Any]:
    x, y = _tensors(_digits()[0])
    return _loader(_dataset(x, y.float()))  # the digit's value as a number to regress


def _one_hot_train() -> DataLoader[Any]:
    x, y = _tensors(_digits()[0])
    return _loader(_dataset(x, nn.functional.one_hot(y, 10).float()))  # labels one-hot encoded upstream


def _seeded_zero_detector() -> ZeroDetector:
    pl.seed_everything(0, workers=True, verbose=False)
    return ZeroDetector()


# --------------------------------------------------------------------------- special runs
def _seed_runs(built_before_seeding: bool) -> Callable[[_Context], Outcome]:
    """Two runs with SeedEverything(seed=0); planted: the model is built before the seeder, from an
    unseeded generator (as in a fresh process), so the two runs start from different weights."""

    def run(ctx: _Context) -> Outcome:
        seeders = []
        for _ in range(2):
            if built_before_seeding:
                torch.seed()  # a fresh process: the generator starts from a non-deterministic seed
                model = DigitsCNN()
                seeder = rc.SeedEverything(seed=0, on_fail="ignore")
            else:
                seeder = rc.SeedEverything(seed=0, on_fail="ignore")
                model = DigitsCNN()
            _fit(ctx, ctx.cache["name"], model, [seeder], _loader(_digits()[0]), max_steps=1)
            seeders.append(seeder)
        a, b = (s.weights_fingerprint for s in seeders)
        note = f"weights fingerprints of the two runs: {a} vs {b} ({'same' if a == b else 'DIFFERENT'})"
        return Outcome(seeders[-1].findings, note)

    return run


def _batch_means(ctx: _Context) -> Outcome:
    """Not a coverage setting, so FullEvalSet passes; its exact figure shows what the batch means hide."""
    (xv, yv) = _tensors(_digits()[1])
    order = torch.argsort(yv, stable=True)  # sorted by label: the short last batch holds only 8s and 9s
    val = _loader(_dataset(xv[order], yv[order]), 350, shuffle=False)  # 359 samples: batches of 350 and 9
    check = rc.FullEvalSet(on_fail="ignore")
    pl.seed_everything(0, workers=True, verbose=False)
    model = CountsBatchMeans()
    _fit(ctx, ctx.cache["name"], model, [check], _loader(_digits()[0]), val, max_steps=20, val_check_interval=20)
    values = check.findings[-1].values
    exact, half = values.get("accuracy", float("nan")), values.get("accuracy_halfwidth", float("nan"))
    gap = abs(model.batch_mean_acc - exact)
    note = (f"mean of batch means {model.batch_mean_acc:.3f} vs exact accuracy {exact:.3f} ± {half:.3f}"
            f" ({'outside' if gap > half else 'inside'} the interval)")
    return Outcome(check.findings, note, shown=gap > half)


def _char_lm(leak: bool) -> Callable[[_Context], Outcome]:
    def run(ctx: _Context) -> Outcome:
        pl.seed_everything(0, workers=True, verbose=False)
        data = CharWindows(inspect.getsource(textwrap))
        check = rc.CausalityCheck(on_fail="ignore")
        model = CharTransformer(len(data.vocab), width=32, leak=leak)
        _fit(ctx, ctx.cache["name"], model, [check], _loader(data, 16), max_steps=1)
        return Outcome(check.findings)

    return run


_HEALTHY_CHECKS: dict[str, Callable[[], RecipeCallback]] = {
    "DataInspector": lambda: rc.DataInspector(top_k=8, on_fail="ignore"),
    "FullEvalSet": lambda: rc.FullEvalSet(on_fail="ignore"),
    "InitLossCheck": lambda: rc.InitLossCheck(on_fail="ignore"),
    "InputIndependentBaseline": lambda: rc.InputIndependentBaseline(on_fail="ignore"),
    "OverfitOneBatch": lambda: rc.OverfitOneBatch(on_fail="ignore"),
    "LossDecreaseCheck": lambda: rc.LossDecreaseCheck(num_steps=30, on_fail="ignore"),
    "InputVisualizer": lambda: rc.InputVisualizer(on_fail="ignore"),
    "PredictionDynamicsLogger": lambda: rc.PredictionDynamicsLogger(every_n_steps=2, on_fail="ignore"),
    "BatchIndependenceCheck": lambda: rc.BatchIndependenceCheck(on_fail="ignore"),
    "NoLRDecayWarning": lambda: rc.NoLRDecayWarning(on_fail="ignore"),
    "UpdateRatioMonitor": lambda: rc.UpdateRatioMonitor(every_n_steps=2, on_fail="ignore"),
    "FirstLayerFilterViz": lambda: rc.FirstLayerFilterViz(on_fail="ignore"),
    "GradientFlowCheck": lambda: rc.GradientFlowCheck(on_fail="ignore"),
    "EvalModeCheck": lambda: rc.EvalModeCheck(on_fail="ignore"),
    "LossCompatibilityCheck": lambda: rc.LossCompatibilityCheck(on_fail="ignore"),
}


def _healthy(check: str) -> Callable[[_Context], Outcome]:
    """The healthy digits demo, once, through every check that applies to it; one row per check."""

    def run(ctx: _Context) -> Outcome:
        if "healthy" not in ctx.cache:
            callbacks = {name: make() for name, make in _HEALTHY_CHECKS.items()}
            _fit(ctx, "control_digits", _seeded_digits_cnn(), list(callbacks.values()), _loader(_digits()[0]),
                 _val()(), max_steps=90, val_check_interval=45)
            ctx.cache["healthy"] = callbacks
        return Outcome(ctx.cache["healthy"][check].findings, "healthy digits CNN, 90 steps")

    return run


# --------------------------------------------------------------------------- the scenarios
def _scenarios() -> list[Scenario]:
    ignore: dict[str, Any] = {"on_fail": "ignore"}
    s = Scenario
    rows = [
        s("one_class_labels", "labels all one class", "1 data", "DataInspector",
          _one(lambda: rc.DataInspector(show_hardest=False, check_duplicates=False, **ignore),
               train=_one_class_train, max_steps=1), match="label"),
        s("train_val_duplicates", "100 train samples copied into val", "1 data", "DataInspector",
          _one(lambda: rc.DataInspector(show_hardest=False, **ignore), val=_val_with_train_copies, max_steps=1),
          match="validation"),
        s("unseeded_init", "model built before seeding (2 runs differ)", "2a seed", "SeedEverything",
          _seed_runs(built_before_seeding=True)),
        s("limit_val_batches", "limit_val_batches=0.5", "2c eval", "FullEvalSet",
          _one(lambda: rc.FullEvalSet(**ignore), val=_val(64), limit_val_batches=0.5, val_check_interval=4)),
        s("val_drop_last", "drop_last=True on the val loader", "2c eval", "FullEvalSet",
          _one(lambda: rc.FullEvalSet(**ignore), val=_val(100, drop_last=True), val_check_interval=4)),
        s("mean_of_batch_means", "accuracy = mean of batch means, short last batch", "2c eval", "FullEvalSet",
          _batch_means),
        s("large_final_weights", "final layer initialised 50x too large", "2d init loss", "InitLossCheck",
          _one(lambda: rc.InitLossCheck(**ignore), _large_head, max_steps=1)),
        s("default_bias_imbalanced", "default bias on a 1:9 task (0 vs rest)", "2e init well", "InitLossCheck",
          _one(lambda: rc.InitLossCheck(**ignore), _seeded_zero_detector, _imbalanced_train, max_steps=1)),
        s("forward_ignores_x", "forward throws the features away", "2g baseline", "InputIndependentBaseline",
          _one(lambda: rc.InputIndependentBaseline(**ignore), lambda: _seeded(IgnoresInput), max_steps=1)),
        s("pipeline_feeds_zeros", "data pipeline feeds all-zero images", "2g baseline", "InputIndependentBaseline",
          _one(lambda: rc.InputIndependentBaseline(**ignore), train=_zeros_train, max_steps=1)),
        s("frozen_layers", "conv layers requires_grad=False", "2h overfit", "OverfitOneBatch",
          _one(lambda: rc.OverfitOneBatch(**ignore), lambda: _frozen(_seeded_digits_cnn(), "features"),
               max_steps=1)),
        s("lr_zero", "learning rate 0", "2h overfit", "OverfitOneBatch",
          _one(lambda: rc.OverfitOneBatch(**ignore), lambda: _seeded_digits_cnn(lr=0.0), max_steps=1)),
        s("wrong_sign_loss", "loss = -cross_entropy", "2h overfit", "OverfitOneBatch",
          _one(lambda: rc.OverfitOneBatch(**ignore), lambda: _seeded(WrongSignLoss), max_steps=1)),
        s("flat_loss", "learning rate 1e-7: the loss stays flat", "2i loss decreases", "LossDecreaseCheck",
          _one(lambda: rc.LossDecreaseCheck(num_steps=12, **ignore), lambda: _seeded_digits_cnn(lr=1e-7),
               max_steps=12)),
        s("raw_pixels", "inputs 0..255, not normalised", "2j visualize input", "InputVisualizer",
          _one(lambda: rc.InputVisualizer(**ignore), train=_raw_pixels_train, max_steps=1)),
        s("nan_in_batch", "a NaN pixel in the batch", "2j visualize input", "InputVisualizer",
          _one(lambda: rc.InputVisualizer(**ignore), train=_nan_train, max_steps=1)),
        s("lr_too_high", "SGD lr 0.5, momentum 0.9: predictions flip", "2k pred. dynamics",
          "PredictionDynamicsLogger",
          _one(lambda: rc.PredictionDynamicsLogger(every_n_steps=1, **ignore), lambda: _seeded(SGDMomentum, 0.5),
               val=_val(), max_steps=40)),
        s("reshape_mixes_batch", "transpose/reshape mixes samples", "2l backprop deps", "BatchIndependenceCheck",
          _one(lambda: rc.BatchIndependenceCheck(**ignore), lambda: _seeded(MixesSamples), max_steps=1)),
        s("attention_off_by_one", "causal mask off by one (char LM)", "2l backprop deps", "CausalityCheck",
          _char_lm(leak=True)),
        s("decay_in_early_stage", "StepLR decay while building the baseline", "3c LR decay", "NoLRDecayWarning",
          _one(lambda: rc.NoLRDecayWarning(**ignore), lambda: _seeded(WithScheduler, "step_decay"), **_short_epochs(6)),
          match="early"),
        s("cosine_tmax_epochs", "cosine T_max=2 epochs, stepped per step", "3c LR decay", "NoLRDecayWarning",
          _one(lambda: rc.NoLRDecayWarning(stage="final", **ignore),
               lambda: _seeded(WithScheduler, "cosine_epochs_per_step"), **_short_epochs(2)),
          match="T_max"),
        s("interval_wrong_level", "'interval' beside 'lr_scheduler' in the dict", "3c LR decay", "NoLRDecayWarning",
          _one(lambda: rc.NoLRDecayWarning(stage="final", **ignore),
               lambda: _seeded(WithScheduler, "interval_top_level"), **_short_epochs(2)),
          match="interval"),
        s("onecycle_total_steps", "OneCycle total_steps=1000 in a 10-step run", "3c LR decay", "NoLRDecayWarning",
          _one(lambda: rc.NoLRDecayWarning(stage="final", **ignore),
               lambda: _seeded(WithScheduler, "onecycle_other_run"), **_short_epochs(2)),
          match="total_steps"),
        s("lr_near_zero_early", "ExponentialLR(gamma=0.3) stepped per step", "3c LR decay", "NoLRDecayWarning",
          _one(lambda: rc.NoLRDecayWarning(stage="final", **ignore),
               lambda: _seeded(WithScheduler, "exponential_fast"), **_short_epochs(2)),
          match="near"),
        s("adam_lr_far", "Adam with lr 0.1 (300x 3e-4): a note", "3a Adam 3e-4", "NoLRDecayWarning",
          _one(lambda: rc.NoLRDecayWarning(**ignore), lambda: _seeded_digits_cnn(lr=0.1), max_steps=1),
          match="Adam"),
        s("noise_filters", "frozen 5x5 first conv: filters stay noise", "4 regularize", "FirstLayerFilterViz",
          _one(lambda: rc.FirstLayerFilterViz(**ignore), _frozen_first_filters, max_steps=4)),
        s("dead_relus", "first conv bias -100: ReLUs dead", "beyond: updates", "UpdateRatioMonitor",
          _one(lambda: rc.UpdateRatioMonitor(every_n_steps=1, **ignore), _dead_relus, max_steps=4),
          match="dead"),
        s("frozen_head_ratio", "head requires_grad=False", "beyond: updates", "UpdateRatioMonitor",
          _one(lambda: rc.UpdateRatioMonitor(every_n_steps=1, activations=False, **ignore),
               lambda: _frozen(_seeded_digits_cnn(), "head"), max_steps=4)),
        s("unused_branch", "aux head computed, never in the loss", "2h/2i grad flow", "GradientFlowCheck",
          _one(lambda: rc.GradientFlowCheck(**ignore), lambda: _seeded(UnusedBranch), max_steps=3)),
        s("detached_features", "detach() after the conv features", "2h/2i grad flow", "GradientFlowCheck",
          _one(lambda: rc.GradientFlowCheck(**ignore), lambda: _seeded(DetachedFeatures), max_steps=3)),
        s("grad_never_zeroed", "manual optimization without zero_grad", "2h/2i grad flow", "GradientFlowCheck",
          _one(lambda: rc.GradientFlowCheck(**ignore), lambda: _seeded(NeverZeroGrad), max_steps=3)),
        s("dropout_in_eval", "F.dropout(h, 0.3): on in eval mode too", "2c/2k eval mode", "EvalModeCheck",
          _one(lambda: rc.EvalModeCheck(**ignore), lambda: _seeded(FunctionalDropout), max_steps=1),
          match="eval-mode forward passes"),
        s("batchnorm_momentum_zero", "BatchNorm(momentum=0): stats never move", "2c/2k eval mode", "EvalModeCheck",
          _one(lambda: rc.EvalModeCheck(**ignore), lambda: _seeded_bn(0.0), max_steps=45), match="train-mode vs"),
        s("double_softmax", "softmax in forward, then cross_entropy", "2d verify loss", "LossCompatibilityCheck",
          _one(lambda: rc.LossCompatibilityCheck(**ignore), lambda: _seeded(SoftmaxForward), max_steps=1)),
        s("double_sigmoid", "sigmoid in forward, then BCE-with-logits", "2d verify loss", "LossCompatibilityCheck",
          _one(lambda: rc.LossCompatibilityCheck(**ignore), _seeded_sigmoid_detector, _imbalanced_train,
               max_steps=1)),
        s("broadcast_mse", "(N, 1) output vs (N,) target in MSE", "2d verify loss", "LossCompatibilityCheck",
          _one(lambda: rc.LossCompatibilityCheck(**ignore), lambda: _seeded(DigitValueRegressor),
               train=_digit_value_train, max_steps=1)),
        s("one_hot_mse", "one-hot targets in MSE on the logits", "2d verify loss", "LossCompatibilityCheck",
          _one(lambda: rc.LossCompatibilityCheck(**ignore), lambda: _seeded(OneHotMSE), train=_one_hot_train,
               max_steps=1)),
    ]
    controls = [
        s(f"control_{snake_case(name)}", "none (healthy digits CNN)", "control", name, _healthy(name), planted=False)
        for name in _HEALTHY_CHECKS
    ]
    controls += [
        s("control_seed", "none (seeded before building)", "control", "SeedEverything",
          _seed_runs(built_before_seeding=False), planted=False),
        s("control_fix_bias", "none (1:9 task with fix_bias=True)", "control", "InitLossCheck",
          _one(lambda: rc.InitLossCheck(fix_bias=True, **ignore), _seeded_zero_detector, _imbalanced_train,
               max_steps=1), planted=False, match="init"),
        s("control_causal_mask", "none (correct causal mask)", "control", "CausalityCheck",
          _char_lm(leak=False), planted=False),
        s("control_batchnorm_eval", "none (BatchNorm, default momentum)", "control", "EvalModeCheck",
          _one(lambda: rc.EvalModeCheck(**ignore), lambda: _seeded_bn(0.1), max_steps=45), planted=False,
          match="train-mode vs"),
        s("control_squeezed_mse", "none ((N, 1) output squeezed before MSE)", "control", "LossCompatibilityCheck",
          _one(lambda: rc.LossCompatibilityCheck(**ignore), lambda: _seeded(DigitValueRegressor, True),
               train=_digit_value_train, max_steps=1), planted=False),
    ]
    return rows + controls


def _short_epochs(epochs: int) -> dict[str, Any]:
    """Epochs of 5 batches, so a schedule over epochs is previewed and run in a few steps."""
    return {"max_steps": -1, "max_epochs": epochs, "limit_train_batches": 5}


def _seeded(cls: Callable[..., pl.LightningModule], *args: Any) -> pl.LightningModule:
    pl.seed_everything(0, workers=True, verbose=False)
    return cls(*args)


# --------------------------------------------------------------------------- leakage and DDP (issue 14, checks 4-5)
class ClipsOnRankZero(DigitsCNN):
    """Bug: weight clipping written by hand inside ``if self.trainer.is_global_zero``: the ranks drift apart."""

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.trainer.is_global_zero:
            with torch.no_grad():
                self.head.weight.clamp_(-0.01, 0.01)


def _val_with_near_copies() -> DataLoader[Any]:
    (xt, yt), (xv, yv) = _tensors(_digits()[0]), _tensors(_digits()[1])
    noise = 0.01 * torch.randn(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    copies = (xt[:40] * 0.8 + 0.1 + noise).clamp(0, 1)  # re-scaled and noised: not exact copies
    return _loader(_dataset(torch.cat([xv, copies]), torch.cat([yv, yt[:40]])), 256, shuffle=False)


def _val_one_sample() -> DataLoader[Any]:
    xv, yv = _tensors(_digits()[1])
    n = len(yv)  # a __getitem__ that ignores its index: one validation sample n times
    return _loader(_dataset(xv[:1].repeat(n, 1, 1, 1), yv[:1].repeat(n)), 256, shuffle=False)


def _ddp(planted: bool) -> Callable[[_Context], Outcome]:
    """Two CPU processes under ddp_spawn; planted: data not sharded and weights clipped on rank 0 only.
    The Findings come back from the run's recipe_report.json (rank 0 writes it)."""

    def run(ctx: _Context) -> Outcome:
        model = _seeded(ClipsOnRankZero) if planted else _seeded_digits_cnn()
        check = rc.DistributedConsistencyCheck(first_steps=2, on_fail="ignore")
        callbacks = [check, rc.RecipeReport(print_report=False)]
        _fit(ctx, ctx.cache["name"], model, callbacks, _loader(_digits()[0]), devices=2, strategy="ddp_spawn",
             max_steps=4, use_distributed_sampler=not planted)
        report = json.loads((Path(ctx.log_dir) / ctx.cache["name"] / "recipe_report.json").read_text())
        return Outcome([Finding.from_dict(f) for f in report["findings"]], "2 processes (ddp_spawn)")

    return run


def _leakage_and_ddp_scenarios() -> list[Scenario]:
    ignore: dict[str, Any] = {"on_fail": "ignore"}
    s = Scenario
    return [
        s("near_duplicates_in_val", "40 re-scaled, noised train images in val", "1 data", "LeakageCheck",
          _one(lambda: rc.LeakageCheck(**ignore), val=_val_with_near_copies, max_steps=1), match="near-duplicate"),
        s("val_one_repeated_sample", "val __getitem__ ignores its index", "1 data", "LeakageCheck",
          _one(lambda: rc.LeakageCheck(**ignore), val=_val_one_sample, max_steps=-1, max_epochs=2),
          match="too good"),
        s("ddp_not_sharded_and_drift", "DDP: use_distributed_sampler=False, clipping on rank 0", "2a seed (DDP)",
          "DistributedConsistencyCheck", _ddp(planted=True)),
        s("control_ddp", "none (DigitsCNN, DDP, 2 ranks)", "control", "DistributedConsistencyCheck",
          _ddp(planted=False), planted=False),
    ]


_HEALTHY_CHECKS["LeakageCheck"] = lambda: rc.LeakageCheck(on_fail="ignore")


SCENARIOS: list[Scenario] = _scenarios() + _leakage_and_ddp_scenarios()


# --------------------------------------------------------------------------- running
def scenario_names() -> list[str]:
    return [s.name for s in SCENARIOS]


def run_scenarios(names: list[str] | None = None, log_dir: str | None = None) -> list[Result]:
    """Run the named scenarios (all when ``None``) and return one :class:`Result` each.

    Logs go to ``log_dir/<scenario>`` (``log_dir/control_digits`` for the healthy digits run
    shared by the ``control_*`` rows of the digits checks; a temporary directory when ``None``).
    The scenarios seed the global random generators (one of them on purpose does not).
    """
    unknown = sorted(set(names or []) - set(scenario_names()))
    if unknown:
        raise ValueError(f"run_scenarios(names={unknown!r}): unknown scenario; known: {scenario_names()}")
    chosen = [s for s in SCENARIOS if names is None or s.name in names]
    with tempfile.TemporaryDirectory(prefix="planted_bugs_") as tmp:
        ctx = _Context(log_dir or tmp)
        results = []
        for scenario in chosen:
            ctx.cache["name"] = scenario.name
            start = time.perf_counter()
            outcome = scenario.run(ctx)
            note, findings = outcome.note, [f for f in outcome.findings if f.check == scenario.check]
            if scenario.match:
                findings = [f for f in findings if scenario.match.lower() in f.summary.lower()] or findings
            worst = max(findings, key=lambda f: _SEVERITY[f.status], default=None)
            summary = "" if worst is None else worst.summary
            results.append(Result(
                scenario.name, scenario.bug, scenario.step, scenario.check, scenario.planted,
                [f.status for f in findings], f"{note}; {summary}" if note else summary,
                time.perf_counter() - start, outcome.shown,
            ))
        return results


def format_table(results: list[Result], width: int = 110) -> str:
    """A plain-text table: bug | recipe step | expected check | caught? | what the check said."""
    head = ("scenario", "bug", "step", "check", "caught?", "finding")
    rows = []
    for r in results:
        verdict = f"{r.verdict} {r.status}"
        text = r.summary if len(r.summary) <= width else r.summary[: width - 3] + "..."
        rows.append((r.name, r.bug, r.step, r.check, verdict, text))
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(5)]
    lines = [" | ".join([*(c.ljust(w) for c, w in zip(row[:5], widths, strict=True)), row[5]]) for row in [head, *rows]]
    lines.insert(1, "-+-".join("-" * w for w in widths) + "-+-" + "-" * 7)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this scenario (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--log-dir", default=None, help="keep the TensorBoard logs here (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.list:
        for s in SCENARIOS:
            print(f"{s.name:26} {s.step:18} {s.check:25} {s.bug}")
        return 0
    if args.only:
        unknown = sorted(set(args.only) - set(scenario_names()))
        if unknown:
            parser.error(f"unknown scenario(s) {unknown}; see --list")
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's hints about workers and logging intervals
        results = run_scenarios(args.only, args.log_dir)
    print(format_table(results))
    missed = [r.name for r in results if not r.ok]
    seconds = sum(r.seconds for r in results)
    print(f"\n{sum(r.ok for r in results)} of {len(results)} as expected; {seconds:.1f} s of training"
          + (f"; not as expected: {', '.join(missed)}" if missed else ""))
    if args.log_dir:
        print(f"TensorBoard: tensorboard --logdir {Path(args.log_dir).resolve()}")
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())
