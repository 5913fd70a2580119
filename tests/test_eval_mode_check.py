"""EvalModeCheck on real Trainer runs: randomness left on in eval mode and BatchNorm statistics that
never move are caught; healthy models pass; the run is bit-identical with and without the check."""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from examples.digits import digits_datasets
from recipe_callbacks import EvalModeCheck, RecipeCheckError, RecipeReport
from recipe_callbacks.plumbing.finding import Finding
from tests.families import BatchNormCNN, healthy_runs
from tests.support import TinyClassifier, blobs, fast_trainer
from tests.zoo import data as zoo_data
from tests.zoo.families import HFCausalLM

DETERMINISM, GAP = "determinism", "train_eval_gap"


def run(tmp_path: Path, model: pl.LightningModule, data: Any, **kw: Any) -> EvalModeCheck:
    check = EvalModeCheck(on_fail="ignore", **kw.pop("check", {}))
    trainer = fast_trainer(tmp_path, callbacks=[check, RecipeReport(print_report=False)],
                           **{"max_epochs": 1, "limit_train_batches": 20, **kw})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, data)
    return check


def by_key(check: EvalModeCheck) -> dict[str, Finding]:
    return dict(check._findings)


def digits_loader(batch_size: int = 32) -> DataLoader[Any]:
    return DataLoader(digits_datasets()[0], batch_size=batch_size, shuffle=True)


class FunctionalDropout(BatchNormCNN):
    """Bug: F.dropout's default is training=True, so this dropout is on in eval mode too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.dropout(self.features(x).flatten(1), 0.3))


class GaussianNoise(nn.Module):
    """Bug: a noise layer that ignores self.training."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.3 * torch.randn_like(x)


class WithNoise(BatchNormCNN):
    def __init__(self) -> None:
        super().__init__()
        self.noise = GaussianNoise()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.noise(self.features(x).flatten(1)))


class AlwaysTraining(nn.Dropout):
    """Bug: a train() override that ignores its argument, so .eval() leaves the dropout on."""

    def train(self, mode: bool = True) -> AlwaysTraining:
        return super().train(True)


class WithStuckDropout(BatchNormCNN):
    def __init__(self) -> None:
        super().__init__()
        self.drop = AlwaysTraining(0.3)


# --------------------------------------------------------------------------- healthy
@pytest.mark.parametrize("family", ["lstm_lm", "gpt", "batchnorm_cnn", "tabular_regression"])
def test_healthy_families_pass(family: str, tmp_path: Path) -> None:
    model, data = healthy_runs()[family]
    check = run(tmp_path, model, data, max_epochs=3, limit_train_batches=30)
    found = by_key(check)
    assert found[DETERMINISM].status == "pass", found
    assert found[DETERMINISM].values["eval_difference"] == 0.0
    gap = found[GAP]
    assert gap.status == "pass", gap
    assert {"init_train_loss", "init_eval_loss", "train_loss", "eval_loss", "ratio", "cost_steps"} <= set(gap.values)
    # the cost is measured: the check's own seconds over this run's median training step
    step = check._step_clock.median()
    assert step is not None and step > 0 and gap.values["cost_seconds"] > 0
    assert gap.values["cost_steps"] == pytest.approx(gap.values["cost_seconds"] / step)
    assert "updates_missing" not in gap.values  # judged: BatchNorm statistics had settled
    report = json.loads((tmp_path / "run" / "recipe_report.json").read_text())
    assert [d["status"] for d in report["findings"] if d["check"] == "EvalModeCheck"] == ["pass", "pass"]


def test_gap_is_judged_at_the_end_of_training_when_the_first_epoch_does_not_end(tmp_path: Path) -> None:
    found = by_key(run(tmp_path, BatchNormCNN(), digits_loader(), max_epochs=-1, max_steps=8, limit_train_batches=None))
    # 8 BatchNorm updates: the statistics still lag (eval mode worse); reported, not judged
    assert found[GAP].status == "pass" and "end of training (step 8)" in found[GAP].summary


# --------------------------------------------------------------------------- Hugging Face GPT-2
class GPT2WithDropout(HFCausalLM):
    """Healthy: GPT-2's own nn.Dropout modules at p=0.1 (they follow model.eval())."""

    def __init__(self) -> None:
        super().__init__()
        for m in self.model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.1


class GPT2FunctionalDropout(HFCausalLM):
    """Bug: F.dropout on the logits with its default training=True, on in eval mode too."""

    def forward(self, **inputs: torch.Tensor) -> Any:
        out = self.model(**inputs)
        out.logits = F.dropout(out.logits, 0.1)
        return out


def _shifted_loss(model: HFCausalLM, batch: dict[str, torch.Tensor]) -> float:
    """The oracle: the eval-mode next-token loss of each sequence (the shift done by hand, -100
    left out), averaged over the sequences."""
    model.eval()
    with torch.no_grad():
        logits = model(**batch).logits[:, :-1]
    labels = batch["labels"][:, 1:]
    losses = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none", ignore_index=-100)
    return float((losses.sum(1) / (labels != -100).sum(1)).mean())


def test_hugging_face_gpt2_runs_through_its_dict_batch_and_passes(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    model, train = GPT2WithDropout(), zoo_data.DictText(64, seed=0)
    at_init = copy.deepcopy(model)
    check = run(tmp_path, model, DataLoader(train, batch_size=16), max_epochs=2, limit_train_batches=4)
    found = by_key(check)
    assert found[DETERMINISM].status == "pass", found[DETERMINISM]
    assert found[DETERMINISM].values["eval_difference"] == 0.0
    gap = found[GAP]
    assert gap.status == "pass", gap
    first = next(iter(DataLoader(train, batch_size=16)))
    # the model's own pairing: labels == input_ids, shifted inside the model, padding at -100
    assert gap.values["init_eval_loss"] == pytest.approx(_shifted_loss(at_init, first), rel=1e-5)
    assert abs(gap.values["init_eval_loss"] - math.log(zoo_data.vocab_size())) < 0.5
    assert gap.values["init_train_loss"] != gap.values["init_eval_loss"]  # dropout is on in train mode


def test_hugging_face_gpt2_with_dropout_left_on_in_eval_fails(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    train = zoo_data.DictText(64, seed=0)
    f = by_key(run(tmp_path, GPT2FunctionalDropout(), DataLoader(train, batch_size=16), limit_train_batches=2))[
        DETERMINISM]
    assert f.status == "fail", f
    assert "randomness enters in 'GPT2FunctionalDropout' (the LightningModule's own forward)" in f.summary


# --------------------------------------------------------------------------- planted
@pytest.mark.parametrize(("model", "where"), [
    (FunctionalDropout, "'FunctionalDropout' (the LightningModule's own forward)"),
    (WithNoise, "'noise'"),
    (WithStuckDropout, "'drop'"),
])
def test_randomness_in_eval_mode_fails_and_is_located(model: type[pl.LightningModule], where: str,
                                                       tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    f = by_key(run(tmp_path, model(), digits_loader()))[DETERMINISM]
    assert f.status == "fail", f
    assert f"randomness enters in {where}" in f.summary
    assert f.values["eval_difference"] > 1e-3
    assert "training=self.training" in f.advice


def test_a_train_override_is_named_as_still_training(tmp_path: Path) -> None:
    f = by_key(run(tmp_path, WithStuckDropout(), digits_loader()))[DETERMINISM]
    assert "still in training mode after .eval(): ['drop']" in f.summary
    assert f.values["modules_in_train_mode"] == 1


def test_batchnorm_momentum_zero_warns_after_the_first_epoch(tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    found = by_key(run(tmp_path, BatchNormCNN(momentum=0.0), digits_loader(), limit_train_batches=30))
    assert found[DETERMINISM].status == "pass"
    gap = found[GAP]
    assert gap.status == "warn", gap
    assert "momentum=0" in gap.summary and "features.1" in gap.summary
    assert gap.values["eval_loss"] > 2 * gap.values["train_loss"]


def test_on_fail_raise_stops_the_fit(tmp_path: Path) -> None:
    check = EvalModeCheck(on_fail="raise")
    trainer = fast_trainer(tmp_path, callbacks=[check], max_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RecipeCheckError, match="eval-mode forward passes of the same batch differ"):
            trainer.fit(WithNoise(), digits_loader())


def test_batch_without_target_skips_the_gap_and_names_the_argument(tmp_path: Path) -> None:
    class InputsOnly(TinyClassifier):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self(batch[0]).pow(2).mean()

    data = DataLoader(torch.utils.data.TensorDataset(blobs().tensors[0]), batch_size=16)
    found = by_key(run(tmp_path, InputsOnly(), data, limit_train_batches=2))
    assert found[DETERMINISM].status == "pass"
    assert found[GAP].status == "skip" and "target_key" in found[GAP].advice


# --------------------------------------------------------------------------- no observer effect
def _final_state(root: Path, callbacks: list[pl.Callback]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    pl.seed_everything(7, workers=True, verbose=False)
    model = BatchNormCNN(dropout=0.3)
    trainer = fast_trainer(root, callbacks=callbacks, max_epochs=2, limit_train_batches=16, deterministic=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, digits_loader(), DataLoader(digits_datasets()[1], batch_size=100))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, torch.get_rng_state()


def test_weights_buffers_and_rng_are_bit_identical_with_and_without_the_check(tmp_path: Path) -> None:
    bare_state, bare_rng = _final_state(tmp_path / "bare", [])
    check = EvalModeCheck(on_fail="ignore")
    state, rng = _final_state(tmp_path / "checked", [check])
    assert by_key(check)[GAP].status == "pass" and "end of epoch 1" in by_key(check)[GAP].summary
    assert bare_state.keys() == state.keys()
    assert any("running_mean" in k for k in state) and any("num_batches_tracked" in k for k in state)
    for key in bare_state:
        assert torch.equal(bare_state[key], state[key]), key  # BatchNorm statistics and counters included
    assert torch.equal(bare_rng, rng)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"max_ratio": 0.5}, ValueError), ({"min_gap": -1.0}, ValueError), ({"tolerance": 0.0}, ValueError),
     ({"task": "ranking"}, ValueError), ({"max_ratio": "2"}, TypeError)],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], error: type[Exception]) -> None:
    name = next(iter(kwargs))
    with pytest.raises(error, match=rf"EvalModeCheck\({name}="):
        EvalModeCheck(**kwargs)
