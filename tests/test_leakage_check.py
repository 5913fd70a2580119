"""LeakageCheck: near-duplicates between training and validation, and too-good-to-be-true figures,
in real Trainer runs: planted leaks are caught, healthy digits, tabular and text models pass."""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from examples.char_lm import CharTransformer
from examples.digits import DigitsCNN, digits_datasets
from recipe_callbacks import Finding, LeakageCheck, RecipeReport
from tests.support import fast_trainer, loader


def _fit(root: Path, model: pl.LightningModule, train: Dataset[Any], val: Dataset[Any], **kw: Any) -> LeakageCheck:
    check = LeakageCheck(on_fail="ignore", **kw.pop("check", {}))
    trainer = fast_trainer(root, callbacks=[check, RecipeReport(print_report=False)], **kw)
    trainer.fit(model, loader(train, 32, shuffle=True), loader(val, 128))
    return check


def _finding(check: LeakageCheck, word: str) -> Finding:
    found = [f for f in check.findings if word in f.summary]
    assert len(found) == 1, [f.summary for f in check.findings]
    return found[0]


def _digits_model() -> DigitsCNN:
    pl.seed_everything(0, verbose=False)
    return DigitsCNN()


class TabularNet(pl.LightningModule):
    """Logistic-regression-sized MLP with dropout for breast_cancer's 30 standardised features."""

    def __init__(self, in_dim: int = 30) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def _breast_cancer() -> tuple[TensorDataset, TensorDataset]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train, val = order[:455], order[455:]
    mean, std = x[train].mean(0), x[train].std(0)
    x = (x - mean) / std
    return TensorDataset(x[train], y[train]), TensorDataset(x[val], y[val])


@pytest.fixture(scope="module")
def digits() -> tuple[TensorDataset, TensorDataset]:
    return digits_datasets(seed=0)


def test_healthy_digits_pass(tmp_path: Path, digits: tuple[TensorDataset, TensorDataset]) -> None:
    check = _fit(tmp_path, _digits_model(), *digits, max_epochs=1)
    near, good = _finding(check, "near-duplicate"), _finding(check, "eval mode")
    assert near.status == "pass" and near.values["near_duplicates"] == 0 and near.values["checked_val"] == 359
    assert good.status == "pass" and good.values["val_accuracy"] < 0.98
    assert 0.5 < good.values["val_train_ratio"] < 2.0
    assert good.values["train_samples"] < 256  # it stopped once the flags were ruled out


class CountedDigits(DigitsCNN):
    """Counts its forward passes in eval mode (the too-good evaluation's; validation_step does none)."""

    def __init__(self, counter: list[int]) -> None:
        super().__init__()
        self.counter = counter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            self.counter.append(int(x.shape[0]))
        return super().forward(x)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass


def test_the_evaluation_stops_once_a_healthy_model_rules_the_flags_out(
    tmp_path: Path, digits: tuple[TensorDataset, TensorDataset]
) -> None:
    counter: list[int] = []
    pl.seed_everything(0, verbose=False)
    check = _fit(tmp_path, CountedDigits(counter), *digits, max_epochs=2, num_sanity_val_steps=0)
    good = _finding(check, "eval mode")
    assert good.status == "pass"
    # the first validation (after 45 steps): a batch of each set ruled both flags out, not 256 samples of each;
    # the second (a model that fits well, so per-sample losses with a long tail) needs them all
    assert counter[:2] == [32, 128] and good.values["train_samples"] == good.values["val_samples"] == 256


def test_healthy_breast_cancer_with_dropout_passes(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    check = _fit(tmp_path, TabularNet(), *_breast_cancer(), max_epochs=1)
    assert [f.status for f in check.findings] == ["pass", "pass"], [f.summary for f in check.findings]
    assert _finding(check, "eval mode").values["val_accuracy"] > 0.85  # it learned, and was not flagged


class CharLM(CharTransformer):
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self(batch[0])


def _windows(stride: int, block: int = 32) -> tuple[TensorDataset, TensorDataset, int]:
    text = inspect.getsource(textwrap)
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text])
    starts = torch.arange(0, len(ids) - block - 1, stride)
    x = torch.stack([ids[s : s + block] for s in starts])  # (N, T) overlapping windows
    y = torch.stack([ids[s + 1 : s + block + 1] for s in starts])
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    k = int(0.9 * len(x))
    return TensorDataset(x[order[:k]], y[order[:k]]), TensorDataset(x[order[k:]], y[order[k:]]), len(vocab)


def test_text_lm_with_overlapping_windows_passes(tmp_path: Path) -> None:
    train, val, vocab = _windows(stride=8)  # windows overlap by 24 of 32 characters
    pl.seed_everything(0, verbose=False)
    check = _fit(tmp_path, CharLM(vocab), train, val, max_steps=20, val_check_interval=10)
    near = _finding(check, "near-duplicate")
    assert near.status == "pass", near.summary
    assert _finding(check, "eval mode").status == "pass"


def test_noisy_copies_of_training_images_in_validation_warn(
    tmp_path: Path, digits: tuple[TensorDataset, TensorDataset]
) -> None:
    (xt, yt), (xv, yv) = digits[0].tensors, digits[1].tensors
    g = torch.Generator().manual_seed(1)
    copies = (xt[:40] * 0.8 + 0.1 + 0.01 * torch.randn(40, 1, 8, 8, generator=g)).clamp(0, 1)  # re-scaled, noised
    val = TensorDataset(torch.cat([xv, copies]), torch.cat([yv, yt[:40]]))
    check = _fit(tmp_path, _digits_model(), digits[0], val, max_steps=2)
    near = _finding(check, "near-duplicate")
    assert near.status == "warn" and near.values["near_duplicates"] >= 36
    assert near.values["identical_signatures"] < near.values["near_duplicates"]  # not exact copies
    assert "val 359 ~ train 0" in near.summary


def test_repeated_text_windows_in_validation_warn(tmp_path: Path) -> None:
    train, val, vocab = _windows(stride=8)
    xv = torch.cat([val.tensors[0], train.tensors[0][:40]])
    xv[-40:, 5::16] = vocab - 1  # two characters changed: a near, not exact, copy
    yv = torch.cat([val.tensors[1], train.tensors[1][:40]])
    pl.seed_everything(0, verbose=False)
    check = _fit(tmp_path, CharLM(vocab), train, TensorDataset(xv, yv), max_steps=1, check={"max_samples": 4000})
    near = _finding(check, "near-duplicate")
    assert near.status == "warn" and near.values["near_duplicates"] >= 40


def test_label_in_the_input_is_too_good_to_be_true(tmp_path: Path, digits: tuple[TensorDataset, TensorDataset]) -> None:
    def leak(ds: TensorDataset) -> TensorDataset:
        x, y = ds.tensors
        x = x.clone()
        x[:, 0, 0, :] = (y[:, None] == torch.arange(8)).float() * 4  # the label, one-hot, in the top row
        x[:, 0, 1, :2] = (y[:, None] == torch.arange(8, 10)).float() * 4
        return TensorDataset(x, y)

    check = _fit(tmp_path, _digits_model(), leak(digits[0]), leak(digits[1]), max_epochs=1)
    good = _finding(check, "too good")
    assert good.status == "warn" and "near 1.0 in the first epoch" in good.summary
    assert good.values["val_accuracy_low"] >= 0.98
    assert good.values["train_samples"] == good.values["val_samples"] == 256  # a flag is never cut short


def test_validation_of_one_repeated_sample_is_far_easier(
    tmp_path: Path, digits: tuple[TensorDataset, TensorDataset]
) -> None:
    xv, yv = digits[1].tensors
    n = len(yv)
    one = TensorDataset(xv[:1].repeat(n, 1, 1, 1), yv[:1].repeat(n))  # __getitem__ that ignores its index
    check = _fit(tmp_path, _digits_model(), digits[0], one, max_epochs=2)
    good = _finding(check, "too good")
    assert good.status == "warn" and "far below the training loss" in good.summary, good.summary
    assert good.values["val_train_ratio"] < 0.5


def test_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=r"LeakageCheck\(tolerance=-1"):
        LeakageCheck(tolerance=-1.0)
    with pytest.raises(ValueError, match="max_first_epoch_accuracy"):
        LeakageCheck(max_first_epoch_accuracy=1.5)
    with pytest.raises(TypeError, match="max_samples"):
        LeakageCheck(max_samples=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="task"):
        LeakageCheck(task="ranking")  # type: ignore[arg-type]
