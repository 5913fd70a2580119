"""InputIndependentBaseline on a real Trainer: planted bugs of recipe step 2g caught, a healthy model
passed; and, for both training checks (2g, 2h), no observer effect, resume and DDP."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from recipe_callbacks.input_independent_baseline import FIRST_HORIZON, InputIndependentBaseline
from recipe_callbacks.overfit_one_batch import OverfitOneBatch
from tests import copy_families as families
from tests.support import TinyClassifier, blobs, fast_trainer, finding_values, loader, read_events, scalar_values

TAG = "recipe.input_independent_baseline"


class AdamClassifier(TinyClassifier):
    """The healthy model: an MLP with Adam."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class IgnoresInput(AdamClassifier):
    """Planted bug: ``forward`` never looks at ``x`` (it feeds a constant to the network)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.ones_like(x))


class DictBatches(AdamClassifier):
    """Healthy, with dict batches ``{"image": x, "label": y}``."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self(batch["image"]), batch["label"])


class DropoutAdam(AdamClassifier):
    """Healthy, with dropout: the runs depend on the RNG, so an observer effect would show."""

    def __init__(self) -> None:
        super().__init__(lr=0.01)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 4))


class BatchNormClassifier(AdamClassifier):
    """Healthy, with batch norm."""

    def __init__(self) -> None:
        super().__init__(lr=0.02)
        self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))


def _fit(model: pl.LightningModule, root: Path, data: Any = None, **cb_kwargs: Any) -> InputIndependentBaseline:
    pl.seed_everything(0)
    cb = InputIndependentBaseline(on_fail="ignore", **cb_kwargs)
    trainer = fast_trainer(root, callbacks=[cb], max_steps=2)
    trainer.fit(model, data if data is not None else loader(blobs(64), batch_size=32))
    assert cb.early_finished
    return cb


def test_healthy_model_passes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    (finding,) = _fit(AdamClassifier(lr=0.02), tmp_path).findings
    assert finding.status == "pass", finding.message()
    v = finding.values
    assert v["separated"] == 1 and v["identical"] == 0
    assert v["gap"] >= v["margin"] > 0
    assert v["steps"] <= v["zero_steps"] <= 60
    assert v["cost_seconds"] > 0
    ea = read_events(tmp_path / "run")
    shown = finding_values(ea, TAG)
    assert shown["gap"] == pytest.approx(v["gap"], rel=1e-3)
    assert shown["zero_loss"] == pytest.approx(v["zero_loss"], rel=1e-3)
    (image,) = ea.Images(f"{TAG}/loss_curves")
    assert image.width > 100 and image.height > 100


def test_model_that_ignores_its_input_is_caught(tmp_path: Path) -> None:
    torch.manual_seed(0)
    (finding,) = _fit(IgnoresInput(lr=0.02), tmp_path).findings
    assert finding.status == "fail", finding.message()
    assert finding.values["identical"] == 1 and finding.values["gap"] == 0
    assert "does not depend on the input" in finding.summary
    assert "forward uses x" in finding.advice


def test_data_pipeline_feeding_zeros_is_caught(tmp_path: Path) -> None:
    x, y = blobs(64).tensors
    zeros = loader(TensorDataset(torch.zeros_like(x), y), batch_size=32)
    torch.manual_seed(0)
    (finding,) = _fit(AdamClassifier(lr=0.02), tmp_path, zeros).findings
    assert finding.status == "fail", finding.message()
    assert "every input value of the first batch is 0" in finding.advice


def test_dict_batches_work_without_configuration(tmp_path: Path) -> None:
    x, y = blobs(64).tensors
    data = loader([{"image": xi, "label": yi} for xi, yi in zip(x, y, strict=True)], batch_size=16)
    torch.manual_seed(0)
    (finding,) = _fit(DictBatches(lr=0.02), tmp_path, data).findings
    assert finding.status == "pass", finding.message()


def test_a_model_that_does_not_learn_gives_no_verdict(tmp_path: Path) -> None:
    torch.manual_seed(0)
    (finding,) = _fit(AdamClassifier(lr=0.0), tmp_path).findings
    assert finding.status == "warn", finding.message()
    assert "OverfitOneBatch" in finding.advice


class NormalisesByItsInput(AdamClassifier):
    """Healthy, but divides by the input's norm: zeroed inputs give NaN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x / x.norm(dim=1, keepdim=True))


def test_zeroed_inputs_that_make_the_loss_nan_give_no_verdict(tmp_path: Path) -> None:
    torch.manual_seed(0)
    (finding,) = _fit(NormalisesByItsInput(lr=0.02), tmp_path).findings
    assert finding.status == "warn", finding.message()
    assert "zeroed inputs became non-finite" in finding.summary


def test_batch_to_xy_batches_are_skipped_naming_input_key(tmp_path: Path) -> None:
    torch.manual_seed(0)
    (finding,) = _fit(AdamClassifier(), tmp_path, batch_to_xy=lambda b: (b[0], b[1])).findings
    assert finding.status == "skip"
    assert "InputIndependentBaseline(input_key=...)" in finding.advice


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_steps": 0}, ValueError, r"InputIndependentBaseline\(max_steps=0\): max_steps"),
        ({"num_samples": "all"}, TypeError, r"InputIndependentBaseline\(num_samples='all'\): num_samples"),
        ({"min_gap": 1.5}, ValueError, r"InputIndependentBaseline\(min_gap=1.5\): min_gap"),
        ({"lr": 0.0}, ValueError, r"InputIndependentBaseline\(lr=0.0\): lr"),
        ({"input_key": ""}, TypeError, r"InputIndependentBaseline\(input_key=''\): input_key"),
    ],
)
def test_argument_errors_name_the_argument(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        InputIndependentBaseline(**kwargs)


# ----------------------------------------------------------------------------- both training checks
def _seeded_run(root: Path, callbacks: list[pl.Callback]) -> tuple[dict[str, torch.Tensor], float]:
    pl.seed_everything(3)
    model = DropoutAdam()
    trainer = fast_trainer(root, callbacks=callbacks, max_epochs=2, log_every_n_steps=1)
    trainer.fit(model, loader(blobs(96), batch_size=16, shuffle=True))
    return model.state_dict(), float(trainer.callback_metrics["train_loss"])


def test_seeded_run_ends_with_the_same_weights_with_both_checks(tmp_path: Path) -> None:
    checks: list[pl.Callback] = [InputIndependentBaseline(on_fail="ignore"), OverfitOneBatch(on_fail="ignore")]
    with_checks, loss_with = _seeded_run(tmp_path / "with", checks)
    without, loss_without = _seeded_run(tmp_path / "without", [])
    assert all(cb.findings for cb in checks)  # type: ignore[attr-defined]
    assert with_checks.keys() == without.keys()
    for name, tensor in with_checks.items():
        assert torch.equal(tensor, without[name]), name
    assert loss_with == loss_without
    ea = read_events(tmp_path / "with" / "run")
    assert len(scalar_values(ea, "train_loss")) == len(
        scalar_values(read_events(tmp_path / "without" / "run"), "train_loss")
    )


class ForwardWatcher(pl.Callback):
    """Another callback that watches the real model's forward passes with a hook during step 0."""

    def __init__(self) -> None:
        self.calls = 0
        self.handle: Any = None

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, idx: int) -> None:
        if idx == 0:

            def hook(module: nn.Module, args: Any, output: Any) -> None:
                self.calls += 1

            self.handle = pl_module.register_forward_hook(hook)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None


def test_hooks_of_other_callbacks_do_not_see_the_copies(tmp_path: Path) -> None:
    watcher = ForwardWatcher()  # registered before the checks run, as InitLossCheck does in the presets
    checks = [InputIndependentBaseline(on_fail="ignore"), OverfitOneBatch(on_fail="ignore")]
    pl.seed_everything(0)
    trainer = fast_trainer(tmp_path, callbacks=[watcher, *checks], max_steps=1)
    trainer.fit(AdamClassifier(lr=0.02), loader(blobs(64), batch_size=32))
    assert all(cb.findings[0].values["steps"] > 0 for cb in checks)
    assert watcher.calls == 1  # the real training step only, none of the copies' passes


def test_resumed_run_does_not_train_the_copies_again(tmp_path: Path) -> None:
    pl.seed_everything(0)
    model = AdamClassifier(lr=0.02)
    first = [InputIndependentBaseline(on_fail="ignore"), OverfitOneBatch(on_fail="ignore")]
    trainer = fast_trainer(tmp_path / "a", callbacks=first, max_epochs=1)
    trainer.fit(model, loader(blobs(64), batch_size=32))
    ckpt = tmp_path / "a.ckpt"
    trainer.save_checkpoint(ckpt)

    again = [InputIndependentBaseline(on_fail="raise", lr=1e-9), OverfitOneBatch(on_fail="raise", lr=1e-9)]
    resumed = fast_trainer(tmp_path / "b", callbacks=again, max_epochs=2)
    resumed.fit(AdamClassifier(lr=0.02), loader(blobs(64), batch_size=32), ckpt_path=str(ckpt))
    for old, new in zip(first, again, strict=True):
        assert new.findings == old.findings  # back from the checkpoint, not judged again
        assert new.early_finished
    tags = read_events(tmp_path / "b" / "run").Tags()["images"]
    assert not any(tag.startswith("recipe") for tag in tags)


def test_ddp_spawn_two_processes(tmp_path: Path) -> None:
    # Each rank trains its own module in place on its own first batch; the Finding is rank 0's, on every rank.
    # (SyncBatchNorm, which the copies make local, needs GPU modules under DDP: not tested here.)
    pl.seed_everything(0)
    checks = [InputIndependentBaseline(on_fail="raise"), OverfitOneBatch(on_fail="raise")]
    trainer = fast_trainer(tmp_path, callbacks=checks, max_steps=1, accelerator="cpu", devices=2, strategy="ddp_spawn")
    trainer.fit(BatchNormClassifier(), loader(blobs(64), batch_size=32))
    ea = read_events(tmp_path / "run")
    assert finding_values(ea, TAG)["separated"] == 1
    overfit = finding_values(ea, "recipe.overfit_one_batch")
    assert overfit["lowest_loss"] <= overfit["target_loss"]
    assert ea.Images(f"{TAG}/loss_curves") and ea.Images("recipe.overfit_one_batch/loss_curve")


class FaintInput(AdamClassifier):
    """Healthy but slow to use its input: the input is scaled down a thousandfold, so within a few
    steps the real run gets only slightly below the zero-input run."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 1e-3)


def test_runs_that_end_pulling_apart_are_undecided_not_a_failure(tmp_path: Path) -> None:
    finding = _fit(FaintInput(), tmp_path, max_steps=8).findings[0]
    values = finding.values
    assert finding.status == "skip", finding.message()
    assert 0 < values["gap"] < values["margin"] and values["separated"] == 0.0 and values["identical"] == 0.0
    assert "max_steps=" in finding.advice and "undecided" in finding.summary



class Passes:
    """A count kept outside the module (the short runs put the module's own attributes back)."""

    def __init__(self) -> None:
        self.count = 0


class CountedFaintInput(AdamClassifier):
    """Healthy, with an input scaled down 300-fold: the curves separate only after the first round
    of 8 steps; counts the passes of its ``training_step``."""

    def __init__(self) -> None:
        super().__init__(lr=0.02)
        self.passes = Passes()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x * 3e-3)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        self.passes.count += 1
        return super().training_step(batch, batch_idx)


def test_a_later_round_continues_the_runs_instead_of_training_them_again(tmp_path: Path) -> None:
    model = CountedFaintInput()
    finding = _fit(model, tmp_path, num_samples=3).findings[0]  # 3 samples: too few pairings for the pairing test
    values = finding.values
    assert finding.status == "pass", finding.message()
    assert values["pairings"] == 0 and values["separated"] == 1
    assert values["zero_steps"] > FIRST_HORIZON and values["steps"] > FIRST_HORIZON  # more than one round
    passes = model.passes.count - 2  # less the Trainer's own two steps
    # every step of both runs once, and per round and run at most one pass without a step (the loss
    # after its last step); starting the runs again would take the earlier rounds' steps again
    steps = values["zero_steps"] + values["steps"]
    rounds = math.ceil(max(values["zero_steps"], values["steps"]) / FIRST_HORIZON)
    assert steps < passes <= steps + 2 * rounds


def test_undecided_curves_are_decided_by_the_pairing_test_after_the_first_round(tmp_path: Path) -> None:
    model = CountedFaintInput()
    finding = _fit(model, tmp_path).findings[0]  # 4 samples of 4 classes: 23 other pairings
    values = finding.values
    assert finding.status == "pass", finding.message()
    assert values["separated"] == 0 and values["gap"] < values["margin"]  # the curves alone were undecided
    assert values["paired"] == 1 and values["pairings"] == 23 and values["pairing_gap"] > 0
    assert values["zero_steps"] == values["steps"] == FIRST_HORIZON  # one round
    # both runs' steps, one pass more each (the loss at their last point), and every pairing before and after
    steps = values["zero_steps"] + values["steps"]
    assert model.passes.count - 2 == steps + 2 + 2 * (values["pairings"] + 1)
    assert "23 other pairings" in finding.summary


def _char_lstm_run(root: Path, callbacks: list[pl.Callback]) -> dict[str, torch.Tensor]:
    data, vocab = families.char_data()
    pl.seed_everything(0)
    model = families.CharLSTM(vocab)  # with dropout: the pairings are compared under one random state
    fast_trainer(root, logger=False, callbacks=callbacks, max_steps=3).fit(
        model, DataLoader(data, batch_size=16, shuffle=True)
    )
    return model.state_dict()


def test_a_language_model_whose_real_curve_starts_behind_passes_in_one_round(tmp_path: Path) -> None:
    # The zero-input run learns the character frequencies faster (its input is the same at every
    # step): after the first round the real curve is still behind it, but the real run has learned
    # which input goes with which target.
    cb = InputIndependentBaseline(on_fail="ignore")
    checked = _char_lstm_run(tmp_path / "checked", [cb])
    (finding,) = cb.findings
    values = finding.values
    assert finding.status == "pass", finding.message()
    assert values["gap"] < 0 < values["pairing_gap"] and values["paired"] == 1
    assert values["steps"] == values["zero_steps"] == FIRST_HORIZON
    bare = _char_lstm_run(tmp_path / "bare", [])
    assert checked.keys() == bare.keys()
    for name, tensor in checked.items():
        assert torch.equal(tensor, bare[name]), name


def test_a_pipeline_feeding_a_constant_is_caught_and_no_pairing_passes_it(tmp_path: Path) -> None:
    x, y = blobs(64).tensors
    ones = loader(TensorDataset(torch.ones_like(x), y), batch_size=32)
    torch.manual_seed(0)
    (finding,) = _fit(AdamClassifier(lr=0.02), tmp_path, ones).findings
    values = finding.values
    assert finding.status == "fail", finding.message()
    assert values["identical"] == 0  # ones are not zeros: the curves differ, the input just says nothing
    # every reordering of the inputs is the same batch: no pairing falls more than another
    assert values["pairings"] == 23 and values["paired"] == 0 and values["pairing_gap"] == 0
    assert "every input value of the first batch is 1" in finding.advice


def test_first_samples_of_one_class_are_replaced_by_the_first_of_each_class_for_the_pairing_test(
    tmp_path: Path,
) -> None:
    data = blobs(64)
    order = [0, 4, 8, 1, 5, 2, 6, 3, *range(9, 64)]  # classes 0 0 0 1 1 2 2 3 ... (blobs cycle 0-3)
    x, y = data.tensors
    assert y[order][:8].tolist() == [0, 0, 0, 1, 1, 2, 2, 3]
    reordered = TensorDataset(x[order], y[order])
    finding = _fit(CountedFaintInput(), tmp_path, data=loader(reordered, batch_size=32)).findings[0]
    values = finding.values
    assert finding.status == "pass", finding.message()
    # samples 0, 3, 5, 7 of the batch (one of each class): 23 other pairings, decided in one round;
    # the first four (three of class 0) would give 3 and the rounds would go on
    assert values["pairings"] == 23 and values["paired"] == 1
    assert values["zero_steps"] == values["steps"] == FIRST_HORIZON
