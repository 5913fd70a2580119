"""Every callback and preset on a device other than the CPU.

The ``standin`` device (tests/standin) is a PrivateUse1 backend: CPU kernels, host memory, but a
distinct device, so an operator that mixes a device tensor with a CPU tensor raises as it does on
CUDA. A real Trainer trains each configuration on it and on the CPU from the same seed: the fit
must finish on the device, and every check must reach the same verdicts there as on the CPU (a
mixed-device error that a callback caught would show as a different verdict or a skip).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import recipe_callbacks
from recipe_callbacks import RecipeCallback, presets
from tests import standin
from tests.support import TinyClassifier, blobs, fast_trainer, loader
from tests.test_causality_check import TinyGPT, token_data


@pytest.fixture(scope="module")
def device() -> torch.device:
    return standin.device()  # builds the extension on first use (cached in .venv/standin-build)


class TinyCNN(pl.LightningModule):
    """A conv net on (N, 1, 8, 8) images with Adam (whose foreach kernels run on the device)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, 4))

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
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def images(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.5
    x[torch.arange(n), 0, 2 * y, 2 * y] += 3.0  # class c lights up pixel (2c, 2c)
    return TensorDataset(x, y)


class SilentValidation(TinyClassifier):
    """validation_step computes nothing the callbacks can read: FullEvalSet runs its own pass."""

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return torch.zeros((), device=self.device)


def _verdicts(callbacks: list[Any]) -> list[tuple[str, str, str]]:
    return sorted(
        (f.check, f.status, f.summary if "device" in f.summary else "")
        for cb in callbacks if isinstance(cb, RecipeCallback) for f in cb.findings
    )


class _TrainedOn(pl.Callback):
    """Records the device of the first training batch (the model is back on the CPU after fit)."""

    device: torch.device | None = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        self.device = self.device or batch[0].device


def _fit(
    root: Path, model_name: str, build: Any, on_device: bool, **trainer_flags: Any
) -> tuple[list[Any], torch.device | None]:
    callbacks = build()
    trained_on = _TrainedOn()
    flags: dict[str, Any] = standin.trainer_flags() if on_device else {}
    pl.seed_everything(0)
    model: pl.LightningModule
    if model_name == "cnn":
        model, train, val = TinyCNN(), images(64, 0), images(32, 1)
    elif model_name == "gpt":
        model, train, val = TinyGPT(dropout=0.0), token_data(), token_data()
    else:
        model = SilentValidation() if model_name == "silent" else TinyClassifier()
        train, val = blobs(64), blobs(32, seed=1)
    trainer = fast_trainer(root, max_epochs=2, callbacks=[trained_on, *callbacks], **flags, **trainer_flags)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, loader(train, shuffle=True), loader(val) if model_name != "gpt" else None)
        if model_name != "gpt":
            trainer.validate(model, loader(val), verbose=False)
    return callbacks, trained_on.device


# A sampling period of 2 steps, so that the monitors do their sampled work within 8 steps.
_SINGLE: list[tuple[str, dict[str, Any], str]] = [
    ("SeedEverything", {"seed": 0}, "cnn"),
    ("DataInspector", {}, "cnn"),
    ("InputVisualizer", {"every_n_steps": 3}, "cnn"),
    ("InitLossCheck", {}, "cnn"),
    ("InitLossCheck", {"fix_bias": True}, "mlp"),
    ("BatchIndependenceCheck", {}, "cnn"),
    ("CausalityCheck", {}, "gpt"),
    ("InputIndependentBaseline", {}, "cnn"),
    ("OverfitOneBatch", {}, "cnn"),
    ("LossDecreaseCheck", {"num_steps": 6}, "cnn"),
    ("NoLRDecayWarning", {}, "cnn"),
    ("FullEvalSet", {"metrics": ["accuracy", "f1", "auroc"]}, "cnn"),
    ("FullEvalSet", {}, "silent"),
    ("PredictionDynamicsLogger", {"every_n_steps": 2}, "cnn"),
    ("FirstLayerFilterViz", {}, "cnn"),
    ("UpdateRatioMonitor", {"every_n_steps": 2, "patience": 2}, "cnn"),
    ("RecipeReport", {"print_report": False}, "cnn"),
]


# Every other member of the full preset (checks added later included), at its defaults.
_SINGLE += [
    (name, dict(kwargs), "cnn")
    for name, kwargs in presets._MEMBERS["full"]
    if name not in {n for n, _, _ in _SINGLE}
]


@pytest.mark.parametrize(("name", "kwargs", "model_name"), _SINGLE, ids=[f"{n}-{m}" for n, _, m in _SINGLE])
def test_callback_on_a_device_agrees_with_the_cpu(
    device: torch.device, tmp_path: Path, name: str, kwargs: dict[str, Any], model_name: str
) -> None:
    def build() -> list[Any]:
        return [getattr(recipe_callbacks, name)(**kwargs)]

    on_device, trained_on = _fit(tmp_path / "device", model_name, build, on_device=True)
    assert trained_on == device
    on_cpu, _ = _fit(tmp_path / "cpu", model_name, build, on_device=False)
    device_verdicts = _verdicts(on_device)
    assert device_verdicts == _verdicts(on_cpu)
    if name != "RecipeReport":
        assert device_verdicts, f"{name} reached no verdict on the device"


@pytest.mark.parametrize(("preset", "model_name"), [("skeleton", "mlp"), ("monitor", "cnn"), ("full", "cnn")])
def test_preset_on_a_device_agrees_with_the_cpu(device: torch.device, tmp_path: Path, preset: str,
                                                model_name: str) -> None:
    def build() -> list[Any]:
        return presets.callbacks(preset, every_n_steps=2)

    flags = {k: v for k, v in presets.trainer_kwargs(preset).items() if k != "callbacks"}  # deterministic=True
    on_device, trained_on = _fit(tmp_path / "device", model_name, build, on_device=True, **flags)
    assert trained_on == device
    on_cpu, _ = _fit(tmp_path / "cpu", model_name, build, on_device=False, **flags)
    verdicts = _verdicts(on_device)
    assert verdicts == _verdicts(on_cpu)
    assert {status for _, status, _ in verdicts} - {"skip"}, "no check reached a verdict"


def test_the_device_raises_on_mixed_devices_and_counts_syncs(device: torch.device) -> None:
    a = torch.ones(3, 4, device=device)
    with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
        a + torch.ones(3, 4)
    with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
        torch.cat([a, torch.ones(3, 4)])
    assert (a + torch.tensor(2.0)).device == device  # a 0-dim CPU tensor is a scalar, as on CUDA
    before = standin.syncs()
    total = (a @ a.T).sum() * 2  # device work alone: no transfer
    assert standin.syncs() == before
    assert float(total) == 72.0 and total.item() == 72.0 and (a * 2).cpu().sum() == 24.0
    assert standin.syncs() == before + 3


_STEP_HOOKS = ("on_train_batch_start", "on_before_backward", "on_after_backward", "on_before_optimizer_step",
               "on_before_zero_grad", "on_train_batch_end")


def test_no_sync_on_unsampled_steps(device: torch.device, tmp_path: Path) -> None:
    """Counted, not timed: the device-to-host reads each callback's per-step hooks make, per step."""
    every = 4
    callbacks = presets.callbacks("full", every_n_steps=every, LossDecreaseCheck={"num_steps": 6})
    syncs_at: dict[tuple[int, str], int] = {}
    batch_index = [-1]

    def counted(hook: Any, owner: str) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            before = standin.syncs()
            try:
                return hook(*args, **kwargs)
            finally:
                made = standin.syncs() - before
                if made:
                    key = (batch_index[0], owner)
                    syncs_at[key] = syncs_at.get(key, 0) + made

        return wrapper

    class Counter(_TrainedOn):
        def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
            super().on_train_batch_start(trainer, pl_module, batch, i)
            batch_index[0] += 1

    for cb in callbacks:
        for name in _STEP_HOOKS:
            hook = getattr(cb, name)
            if callable(hook):  # None: a hook Lightning does not call (the callback has nothing in it)
                setattr(cb, name, counted(hook, type(cb).__name__))
    seen = Counter()
    trainer = fast_trainer(tmp_path, max_epochs=4, callbacks=[seen, *callbacks], **standin.trainer_flags())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(TinyCNN(), loader(images(64, 0), shuffle=True), loader(images(32, 1)))
    assert seen.device == device and batch_index[0] == 15
    # Batch s starts at global step s: monitors sample at s % every == 0 (before the step) or record
    # when the step they end is a multiple (s + 1); the first steps are dense (0, 1, 2, 4) and hold the
    # one-off checks.
    sampled = {s for s in range(16) if s % every == 0 or (s + 1) % every == 0 or s < 6}
    steps = {s for s, _ in syncs_at}
    assert steps & sampled, "the sampled steps read nothing back: the count is broken"
    assert steps <= sampled, f"syncs on unsampled steps: {sorted(steps - sampled)}"
    # a sampled step copies what it measured in one transfer (InputVisualizer: the inputs and the labels)
    allowed = {"InputVisualizer": 2, "LossDecreaseCheck": 2}
    assert {key: n for key, n in syncs_at.items() if key[0] >= 6 and n > allowed.get(key[1], 1)} == {}
    # LossDecreaseCheck keeps the watched losses on the device and reads them only at its looks (the
    # batch ending its 6th and 12th optimizer step): one transfer of the losses, one of its weight sample
    looks = {s: n for (s, owner), n in syncs_at.items() if owner == "LossDecreaseCheck"}
    assert set(looks) <= {5, 11} and looks, f"LossDecreaseCheck read at batches {looks}, not only at its looks"
    assert max(looks.values()) <= 2
