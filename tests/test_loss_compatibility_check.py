"""LossCompatibilityCheck on real Trainer runs: each planted output/loss mismatch is named from the
user's own loss value; healthy models (and losses with extra terms) pass."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from recipe_callbacks import LossCompatibilityCheck, RecipeCheckError
from recipe_callbacks.plumbing.finding import Finding
from tests.families import TinyGPT, diabetes, healthy_runs, text_windows
from tests.support import TinyClassifier, blobs, fast_trainer, loader, read_events, text_values

TAG = "recipe.loss_compatibility_check"


def run(tmp_path: Path, model: pl.LightningModule, data: Any = None, **kw: Any) -> Finding:
    check = LossCompatibilityCheck(on_fail="ignore")
    trainer = fast_trainer(tmp_path, callbacks=[check], max_steps=kw.pop("steps", 2), **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, data if data is not None else loader(blobs()))
    assert len(check.findings) == 1, check.findings
    return check.findings[0]


class Planted(TinyClassifier):
    """One output/loss pairing per ``mode``, written as users write them."""

    def __init__(self, mode: str, outputs: int = 4) -> None:
        super().__init__(num_classes=outputs)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if self.mode in ("double_softmax", "softmax_nll_log"):
            return torch.softmax(out, dim=1)
        if self.mode in ("double_sigmoid", "sigmoid_bce"):
            return torch.sigmoid(out)
        if self.mode == "log_softmax_nll":
            return F.log_softmax(out, dim=1)
        return out

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        out, mode = self(x), self.mode
        losses = {
            "logits_ce": lambda: F.cross_entropy(out, y),
            "double_softmax": lambda: nn.CrossEntropyLoss()(out, y),
            "softmax_in_step": lambda: F.cross_entropy(out.softmax(dim=1), y),
            "nll_on_logits": lambda: F.nll_loss(out, y),
            "log_softmax_nll": lambda: F.nll_loss(out, y),
            "softmax_nll_log": lambda: F.nll_loss(torch.log(out), y),
            "label_smoothing": lambda: F.cross_entropy(out, y, label_smoothing=0.1),
            "double_sigmoid": lambda: nn.BCEWithLogitsLoss()(out, y.float().unsqueeze(1)),
            "bce_with_logits": lambda: F.binary_cross_entropy_with_logits(out.squeeze(1), y.float()),
            "sigmoid_bce": lambda: F.binary_cross_entropy(out.squeeze(1), y.float()),
            "broadcast_mse": lambda: F.mse_loss(out, y),
            "broadcast_l1": lambda: nn.L1Loss()(out, y),
            "squeezed_mse": lambda: F.mse_loss(out.squeeze(-1), y),
            "one_hot_mse": lambda: F.mse_loss(out, y),
            "one_hot_ce": lambda: F.cross_entropy(out, y),
            "class_ids_mse": lambda: F.mse_loss(out.squeeze(-1), y.float()),
        }
        return losses[mode]()


def classes() -> DataLoader[Any]:
    return loader(blobs())


def binary() -> DataLoader[Any]:
    x, y = blobs().tensors
    return loader(TensorDataset(x, y % 2))


def regression() -> DataLoader[Any]:
    x, _ = blobs().tensors
    return loader(TensorDataset(x, x[:, 0] * 2.0 + 1.0))


def one_hot() -> DataLoader[Any]:
    x, y = blobs().tensors
    return loader(TensorDataset(x, F.one_hot(y, 4).float()))


# --------------------------------------------------------------------------- planted
@pytest.mark.parametrize(("mode", "outputs", "data", "status", "named", "fix"), [
    ("double_softmax", 4, classes, "fail", "a double softmax", "Return the logits from forward"),
    ("softmax_in_step", 4, classes, "fail", "cross_entropy(softmax(output), y)", "pass the raw logits"),
    ("nll_on_logits", 4, classes, "fail", "NLL of outputs that are logits", "add log_softmax"),
    ("double_sigmoid", 1, binary, "fail", "the sigmoid applied twice", "drop the sigmoid"),
    ("broadcast_mse", 1, regression, "fail", "mse(output, y) broadcast to (16, 16)", "y_hat.squeeze(-1)"),
    ("broadcast_l1", 1, regression, "fail", "l1(output, y) broadcast to (16, 16)", "y_hat.squeeze(-1)"),
    ("one_hot_mse", 4, one_hot, "warn", "a regression loss on one-hot targets", "F.cross_entropy(logits, y.argmax(1))"),
    ("class_ids_mse", 1, classes, "warn", "a regression loss on integer class ids", "output C logits"),
])
def test_planted_mismatch_is_named_with_its_fix(
    mode: str, outputs: int, data: Any, status: str, named: str, fix: str, tmp_path: Path
) -> None:
    pl.seed_everything(0, verbose=False)
    f = run(tmp_path, Planted(mode, outputs), data())
    assert f.status == status, f
    assert named in f.summary and fix in f.advice, f
    assert abs(f.values["user_loss"] - f.values["matched_loss"]) <= 1e-4 * abs(f.values["user_loss"]) + 1e-6
    # every candidate and its value reaches TensorBoard as text
    text = text_values(read_events(tmp_path / "run"), f"{TAG}/candidates")
    assert text and "| yes |" in text[-1]


# --------------------------------------------------------------------------- healthy
@pytest.mark.parametrize(("mode", "outputs", "data", "named"), [
    ("logits_ce", 4, classes, "cross_entropy(output, y)"),
    ("log_softmax_nll", 4, classes, "nll_loss(output, y)|cross_entropy(output, y)"),  # the same value: both right
    ("softmax_nll_log", 4, classes, "nll_loss(log(output), y)"),
    ("bce_with_logits", 1, binary, "binary_cross_entropy_with_logits(output, y)"),
    ("sigmoid_bce", 1, binary, "binary_cross_entropy(output, y)"),
    ("squeezed_mse", 1, regression, "mse(output, y)"),
    ("one_hot_ce", 4, one_hot, "cross_entropy(output, p)"),
])
def test_correct_pairings_pass_and_are_named(mode: str, outputs: int, data: Any, named: str, tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    f = run(tmp_path, Planted(mode, outputs), data())
    assert f.status == "pass", f
    assert any(f"equals {name} =" in f.summary for name in named.split("|")), f


def test_a_loss_with_extra_terms_is_not_called_a_mistake(tmp_path: Path) -> None:
    f = run(tmp_path, Planted("label_smoothing"), classes())
    assert f.status == "pass" and "matches none" in f.summary, f
    assert "matched_loss" not in f.values


@pytest.mark.parametrize("family", ["lstm_lm", "gpt", "batchnorm_cnn", "tabular_regression"])
def test_healthy_families_pass(family: str, tmp_path: Path) -> None:
    model, data = healthy_runs()[family]
    f = run(tmp_path, model, data)
    assert f.status == "pass", f
    assert "equals" in f.summary  # the loss was identified, not merely unmatched
    assert f.values["cost_steps"] >= 0


def test_cost_steps_is_the_measured_time_over_the_median_step(tmp_path: Path) -> None:
    check = LossCompatibilityCheck(on_fail="ignore")
    trainer = fast_trainer(tmp_path, callbacks=[check], max_steps=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(TinyClassifier(), loader(blobs()))
    (f,) = check.findings
    step = check._step_clock.median()
    assert step is not None and step > 0 and f.values["cost_seconds"] > 0
    assert f.values["cost_steps"] == pytest.approx(f.values["cost_seconds"] / step)


def test_gradient_accumulation_is_undone(tmp_path: Path) -> None:
    f = run(tmp_path, Planted("double_softmax"), classes(), accumulate_grad_batches=4, steps=1)
    assert f.status == "fail" and "a double softmax" in f.summary


class TokenBatches(Dataset[dict[str, torch.Tensor]]):
    """Hugging Face-style batches: input_ids and labels (the same ids; the model shifts inside), -100 padding."""

    def __init__(self) -> None:
        self.windows = text_windows()

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = self.windows[i][0]
        labels = ids.clone()
        labels[-3:] = -100
        return {"input_ids": ids, "labels": labels}


class CausalLMWithInternalShift(TinyGPT):
    """forward(input_ids, labels) returns {"loss", "logits"} as a Hugging Face causal LM does."""

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        logits = super().forward(input_ids)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
        return out

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self(batch["input_ids"], labels=batch["labels"])["loss"]


def test_causal_lm_that_shifts_labels_inside_passes(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    model = CausalLMWithInternalShift(len(text_windows().vocab))
    f = run(tmp_path, model, DataLoader(TokenBatches(), batch_size=8))
    assert f.status == "pass", f
    assert "shifted by one position" in f.summary


class CallsSubmodule(TinyClassifier):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(torch.softmax(self.net(x), dim=1), y)  # not self(x): the hook reads self.net


def test_output_of_a_submodule_when_training_step_does_not_call_self(tmp_path: Path) -> None:
    f = run(tmp_path, CallsSubmodule(), classes())
    assert f.status == "fail" and "submodule 'net'" in f.summary, f


def test_on_fail_raise_stops_the_fit(tmp_path: Path) -> None:
    trainer = fast_trainer(tmp_path, callbacks=[LossCompatibilityCheck(on_fail="raise")], max_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RecipeCheckError, match="double softmax"):
            trainer.fit(Planted("double_softmax"), classes())


def test_regression_on_real_tabular_data_with_broadcast_fails(tmp_path: Path) -> None:
    class Broadcast(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            return F.mse_loss(self(x), y)  # (32, 1) against (32,)

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.parameters(), lr=1e-3)

    pl.seed_everything(0, verbose=False)
    f = run(tmp_path, Broadcast(), DataLoader(diabetes(), batch_size=32))
    assert f.status == "fail" and "broadcast to (32, 32)" in f.summary, f


@pytest.mark.parametrize(("kwargs", "error"), [({"rtol": 0.0}, ValueError), ({"rtol": 0.9}, ValueError),
                                               ({"rtol": "1e-4"}, TypeError), ({"on_fail": "loud"}, ValueError)])
def test_bad_arguments_are_named(kwargs: dict[str, Any], error: type[Exception]) -> None:
    name = next(iter(kwargs))
    with pytest.raises(error, match=rf"LossCompatibilityCheck\({name}="):
        LossCompatibilityCheck(**kwargs)


def test_bf16_mixed_precision_outputs_are_matched(tmp_path: Path) -> None:
    assert run(tmp_path, Planted("logits_ce"), classes(), precision="bf16-mixed").status == "pass"
    f = run(tmp_path / "planted", Planted("double_softmax"), classes(), precision="bf16-mixed")
    assert f.status == "fail" and "a double softmax" in f.summary, f
