"""The short trainings train the user's module in place and put it back bit for bit (torch.compile,
lazy modules too); healthy models of the common families pass, planted bugs are caught; the cost
is measured."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from recipe_callbacks import BatchIndependenceCheck, InputIndependentBaseline, OverfitOneBatch
from recipe_callbacks.plumbing.copy_training import ShortTrainings
from tests import copy_families as families
from tests.support import TinyClassifier, blobs, fast_trainer, loader


class StateAt(pl.Callback):
    """Keeps a copy of the model's state (weights and BatchNorm statistics) at the first batch start."""

    def __init__(self) -> None:
        self.state: dict[str, torch.Tensor] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        if not self.state:
            self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


class BNNet(TinyClassifier):
    def __init__(self, compiled_child: bool = False) -> None:
        super().__init__(lr=0.02)
        net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
        self.net = torch.compile(net, backend="eager") if compiled_child else net  # type: ignore[assignment]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch  # no self.log: Lightning cannot compile it (dynamo fails on it with or without the checks)
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def _checks() -> list[pl.Callback]:
    return [InputIndependentBaseline(on_fail="ignore"), OverfitOneBatch(on_fail="ignore")]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("compiled", ["none", "trainer", "child"])
def test_the_module_is_back_bit_for_bit_after_the_checks(tmp_path: Path, compiled: str) -> None:
    pl.seed_everything(0)
    model = BNNet(compiled_child=compiled == "child")
    before, after = StateAt(), StateAt()
    checks = _checks()
    trainer = fast_trainer(tmp_path, logger=False, callbacks=[before, *checks, after], max_steps=3)
    fit_model: Any = torch.compile(model, backend="eager") if compiled == "trainer" else model
    trainer.fit(fit_model, loader(blobs(64), batch_size=32))
    assert _same(before.state, after.state)  # weights and BatchNorm running stats, bit for bit
    assert any("running_mean" in k for k in after.state)
    for cb in checks:
        (finding,) = cb.findings
        assert finding.status == "pass", finding.message()


def _final_state(root: Path, callbacks: list[pl.Callback], compiled: bool = False) -> dict[str, torch.Tensor]:
    pl.seed_everything(1)
    model = BNNet()
    trainer = fast_trainer(root, logger=False, callbacks=callbacks, max_steps=4)
    trainer.fit(torch.compile(model, backend="eager") if compiled else model, loader(blobs(64), batch_size=16))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("compiled", [False, True])
def test_a_seeded_run_ends_with_the_same_weights_and_batchnorm_stats(tmp_path: Path, compiled: bool) -> None:
    bare = _final_state(tmp_path / "bare", [], compiled)
    checked = _final_state(tmp_path / "checked", _checks(), compiled)
    assert _same(bare, checked)


class LazyNet(TinyClassifier):
    def __init__(self) -> None:
        super().__init__(lr=0.02)
        self.net = nn.Sequential(nn.LazyLinear(16), nn.ReLU(), nn.Linear(16, 4))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def _lazy_run(root: Path, callbacks: list[pl.Callback]) -> dict[str, torch.Tensor]:
    pl.seed_everything(2)
    model = LazyNet()
    fast_trainer(root, logger=False, callbacks=callbacks, max_steps=1).fit(model, loader(blobs(64), batch_size=16))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_lazy_modules_run_and_keep_the_users_initial_weights(tmp_path: Path) -> None:
    bare = _lazy_run(tmp_path / "bare", [])
    checks = [*_checks(), BatchIndependenceCheck(on_fail="ignore")]
    assert _same(bare, _lazy_run(tmp_path / "checked", checks))
    for cb in checks:
        (finding,) = cb.findings
        assert finding.status == "pass", finding.message()


# ----------------------------------------------------------------------------- the families
def _families() -> dict[str, Any]:
    data, vocab = families.char_data()
    cases: dict[str, Any] = {
        "lstm_lm": lambda: (families.CharLSTM(vocab), DataLoader(data, batch_size=16)),
        "nanogpt": lambda: (families.NanoGPT(vocab), DataLoader(data, batch_size=16)),
        "mse_regression": lambda: (families.Regressor(), DataLoader(families.diabetes(), batch_size=32)),
        "segmentation_11": lambda: (families.Segmenter(), DataLoader(families.digit_segments(), batch_size=16)),
    }
    return cases


@pytest.mark.parametrize("family", ["lstm_lm", "nanogpt", "mse_regression", "segmentation_11", "gpt2"])
def test_healthy_models_of_each_family_pass(tmp_path: Path, family: str) -> None:
    pl.seed_everything(0)
    if family == "gpt2":
        pytest.importorskip("transformers")
        dl, vocab = families.gpt2_loader()
        model: pl.LightningModule = families.HFGPT2(vocab)
        checks = [InputIndependentBaseline(on_fail="ignore", input_key="input_ids"), OverfitOneBatch(on_fail="ignore")]
    else:
        model, dl = _families()[family]()
        checks = _checks()
    fast_trainer(tmp_path, logger=False, callbacks=checks, max_steps=12).fit(model, dl)
    for cb in checks:
        (finding,) = cb.findings
        assert finding.status == "pass", finding.message()
        assert finding.values["cost_seconds"] > 0


class ZeroedGPT(families.NanoGPT):
    """Planted bug: the input is zeroed in forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.zeros_like(x))


class FrozenGPT(families.NanoGPT):
    """Planted bug: every parameter frozen."""

    def __init__(self, vocab: int) -> None:
        super().__init__(vocab)
        self.requires_grad_(False)
        self.lm_head.weight.requires_grad_(False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=self.lr)


def test_planted_bugs_in_a_language_model_are_caught(tmp_path: Path) -> None:
    data, vocab = families.char_data()
    pl.seed_everything(0)
    iib = InputIndependentBaseline(on_fail="ignore")
    fast_trainer(tmp_path / "a", logger=False, callbacks=[iib], max_steps=1).fit(
        ZeroedGPT(vocab), DataLoader(data, batch_size=16)
    )
    (finding,) = iib.findings
    assert finding.status == "fail" and finding.values["identical"] == 1, finding.message()
    assert finding.values["steps"] <= 4  # identical over the first points: it stopped there

    class LRZero(families.NanoGPT):
        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.AdamW(self.parameters(), lr=0.0)

    oob = OverfitOneBatch(on_fail="ignore")
    fast_trainer(tmp_path / "b", logger=False, callbacks=[oob], max_steps=1).fit(
        LRZero(vocab), DataLoader(data, batch_size=16)
    )
    (finding,) = oob.findings
    assert finding.status == "fail" and "learning rate is 0" in finding.advice, finding.message()
    assert finding.values["steps"] < 60  # the flat curve levelled off: it stopped early


def test_cost_steps_is_the_measured_time_over_the_median_step(tmp_path: Path) -> None:
    pl.seed_everything(0)
    checks = [*_checks(), BatchIndependenceCheck(on_fail="ignore")]
    fast_trainer(tmp_path, logger=False, callbacks=checks, max_steps=14).fit(
        BNNet(), loader(blobs(256), batch_size=16)
    )
    for cb in checks:
        (finding,) = cb.findings
        step = cb._step_clock.median()
        assert step is not None and step > 0
        assert finding.values["cost_steps"] == pytest.approx(finding.values["cost_seconds"] / step)


def test_a_batch_whose_only_target_is_the_input_is_a_skip_naming_target_key(tmp_path: Path) -> None:
    class LabelsFromInput(families.NanoGPT):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            ids = batch["input_ids"]
            logits = self(ids[:, :-1])
            return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))

    data, vocab = families.char_data()
    rows = [{"input_ids": x} for x, _ in data]
    pl.seed_everything(0)
    iib = InputIndependentBaseline(on_fail="ignore")
    fast_trainer(tmp_path, logger=False, callbacks=[iib], max_steps=1).fit(
        LabelsFromInput(vocab), DataLoader(rows, batch_size=8)  # type: ignore[arg-type]
    )
    (finding,) = iib.findings
    assert finding.status == "skip" and "target_key" in finding.advice, finding.message()


class DropoutBNNet(BNNet):
    """Batch norm statistics, dropout draws and Adam's moments: everything a continued run must carry on."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 4))


class ContinuedRuns(pl.Callback):
    """At the first batch: a run of 4 steps kept and continued to 12 (once more, to 20), beside
    uninterrupted runs of 12 and 20 steps from the start of fit."""

    def __init__(self) -> None:
        self.curves: dict[str, list[float]] = {}

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        if self.curves:
            return
        with ShortTrainings(trainer, pl_module, None) as trainings:
            first = trainings.run([batch], 4, seed=5, keep=True)
            assert first.state is not None
            middle = trainings.run([batch], 12, seed=5, keep=True, resume=first.state)
            last = trainings.run([batch], 20, seed=5, resume=middle.state)
            self.curves = {
                "continued 12": middle.run.losses, "whole 12": trainings.run([batch], 12, seed=5).run.losses,
                "continued 20": last.run.losses, "whole 20": trainings.run([batch], 20, seed=5).run.losses,
            }
            self.fresh = (middle.run.fresh_steps, last.run.fresh_steps)


def test_a_kept_run_continued_gives_the_uninterrupted_curve_and_the_module_comes_back(tmp_path: Path) -> None:
    pl.seed_everything(0)
    before, after, runs = StateAt(), StateAt(), ContinuedRuns()
    trainer = fast_trainer(tmp_path, logger=False, callbacks=[before, runs, after], max_steps=1)
    trainer.fit(DropoutBNNet(), loader(blobs(64), batch_size=32))
    assert runs.curves["continued 12"] == runs.curves["whole 12"] and len(runs.curves["whole 12"]) == 13
    assert runs.curves["continued 20"] == runs.curves["whole 20"]
    assert runs.fresh == (8, 8)  # only the steps past the earlier run's
    assert _same(before.state, after.state)
