"""FullEvalSet on real Trainers: exact means, coverage warnings, several dataloaders, test, DDP."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torchmetrics
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset, IterableDataset, Sampler, TensorDataset

from recipe_callbacks import RecipeReport, RecipeWarning
from recipe_callbacks.full_eval_set import FullEvalSet
from tests.support import TinyClassifier, blobs, fast_trainer, loader, read_events, scalar_values

TAG = "recipe.full_eval_set"


# ------------------------------------------------------- models and data (top level: DDP pickles them)
class SilentClassifier(TinyClassifier):
    """A validation_step that returns nothing and logs its loss with sync_dist, as many users write it."""

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y), sync_dist=True)


class DictDataset(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = self.base[i]
        return {"image": x, "label": y}


class NetOnlyClassifier(TinyClassifier):
    """Dict batches, dropout, and a validation_step that calls self.net(x), never self(x)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 4))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch["image"]), batch["label"])

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.log("val_loss", F.cross_entropy(self.net(batch["image"]), batch["label"]))


class EvenIndices(Sampler[int]):
    """A custom sampler that visits only every other sample."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self) -> Any:
        return iter(range(0, self.n, 2))

    def __len__(self) -> int:
        return (self.n + 1) // 2


class Stream(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, base: TensorDataset) -> None:
        self.base = base

    def __iter__(self) -> Any:
        return iter(self.base)


def direct(model: nn.Module, dataset: TensorDataset) -> tuple[float, float]:
    """The oracle: mean cross-entropy (float64) and accuracy of the model on the whole set at once."""
    x, y = dataset.tensors
    model.eval()
    with torch.no_grad():
        logits = model(x)
    loss = F.cross_entropy(logits.double(), y, reduction="none").mean()
    return float(loss), float((logits.argmax(1) == y).double().mean())


def findings_by_status(cb: FullEvalSet) -> list[str]:
    return [f.status for f in cb.findings]


# ----------------------------------------------------------------------------- exactness
def test_exact_mean_over_a_set_that_is_not_a_multiple_of_the_batch_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, val = SilentClassifier(), blobs(37, seed=1)  # batches of 16, 16, 5
    cb = FullEvalSet()
    trainer = fast_trainer(tmp_path, callbacks=[cb], limit_train_batches=2, num_sanity_val_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecipeWarning)  # a healthy set-up raises no recipe warning
        trainer.fit(model, loader(blobs(64), 16), loader(val, 16))

    loss, accuracy = direct(model, val)
    (finding,) = cb.findings
    assert finding.status == "pass", finding.summary
    assert finding.values["loss"] == pytest.approx(loss, rel=1e-6)
    assert finding.values["accuracy"] == pytest.approx(accuracy, rel=1e-6)
    assert finding.values["num_samples"] == 37 and finding.values["cost_steps"] == 0.0
    x, y = val.tensors
    with torch.no_grad():
        batch_means = [
            F.cross_entropy(model(xb).double(), yb).item() for xb, yb in zip(x.split(16), y.split(16), strict=True)
        ]
    mean_of_batch_means = sum(batch_means) / len(batch_means)
    assert abs(mean_of_batch_means - loss) > 1e-3 * loss  # the figure a mean of batch means gives is off
    assert "n = 37" in finding.summary and "±" in finding.summary

    ea = read_events(tmp_path / "run")
    assert scalar_values(ea, f"{TAG}/num_samples") == [37.0]  # the sanity check is not counted
    assert scalar_values(ea, f"{TAG}/loss") == [pytest.approx(loss, rel=1e-5)]
    assert scalar_values(ea, f"{TAG}/loss_stderr")[0] == pytest.approx(finding.values["loss_stderr"], rel=1e-5)
    assert scalar_values(ea, f"{TAG}/accuracy_stderr")[0] > 0


def test_own_forward_pass_when_validation_step_does_not_call_forward(tmp_path: Path) -> None:
    """Dict batches and self.net(x): FullEvalSet runs its own pass, says so, and changes nothing."""

    def run(with_callback: bool) -> tuple[NetOnlyClassifier, list[FullEvalSet]]:
        torch.manual_seed(0)
        model = NetOnlyClassifier()
        callbacks = [FullEvalSet()] if with_callback else []
        trainer = fast_trainer(tmp_path / str(with_callback), callbacks=callbacks, max_epochs=2, limit_train_batches=3)
        train = loader(DictDataset(blobs(48)), 16, shuffle=True)
        trainer.fit(model, train, loader(DictDataset(blobs(21, seed=1)), 8))
        return model, callbacks

    watched, (cb,) = run(True)
    bare, _ = run(False)
    for a, b in zip(watched.parameters(), bare.parameters(), strict=True):
        assert torch.equal(a, b)  # no observer effect: same weights, bit for bit
    (finding,) = cb.findings
    assert finding.values["cost_steps"] == pytest.approx(3 / 3)  # 3 batches of 8, a third of a step each
    assert "own forward pass" in finding.summary
    assert finding.values["loss"] == pytest.approx(direct(watched, blobs(21, seed=1))[0], rel=1e-6)


# ----------------------------------------------------------------------------- coverage warnings
def _validate(tmp_path: Path, val_loader: Any, **trainer_kwargs: Any) -> tuple[FullEvalSet, list[str]]:
    torch.manual_seed(0)
    cb = FullEvalSet()
    trainer = fast_trainer(tmp_path, callbacks=[cb], **trainer_kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.validate(TinyClassifier(), val_loader, verbose=False)
    return cb, [str(w.message) for w in caught if issubclass(w.category, RecipeWarning)]


@pytest.mark.parametrize(
    ("setting", "make_loader", "trainer_kwargs", "count"),
    [
        ("limit_val_batches=0.5", lambda d: loader(d, 8), {"limit_val_batches": 0.5}, 16),
        ("drop_last=True", lambda d: loader(d, 8, drop_last=True), {}, 32),
        ("EvenIndices", lambda d: loader(d, 8, sampler=EvenIndices(len(d))), {}, 19),
        ("IterableDataset of unknown length", lambda d: loader(Stream(d), 8), {}, 37),
        # Lightning's wrapper around a custom sampler under DDP (rank 0 of 2 here): the custom sampler is found inside
        ("EvenIndices", lambda d: loader(d, 8, sampler=DistributedSamplerWrapper(EvenIndices(len(d)), 2, 0)), {}, 10),
    ],
)
def test_coverage_warning_names_the_setting(
    tmp_path: Path, setting: str, make_loader: Any, trainer_kwargs: dict[str, Any], count: int
) -> None:
    cb, messages = _validate(tmp_path, make_loader(blobs(37)), **trainer_kwargs)
    (finding,) = cb.findings
    assert finding.status == "warn"
    assert finding.values["num_samples"] == count
    assert len(messages) == 1 and setting in messages[0]
    if setting.startswith("Iterable"):
        assert "saw 37 samples" in messages[0]


def test_healthy_loader_raises_no_warning(tmp_path: Path) -> None:
    cb, messages = _validate(tmp_path, loader(blobs(37), 8, shuffle=True))
    assert messages == [] and findings_by_status(cb) == ["pass"]


def test_repeated_coverage_problem_warns_once_and_replaces_its_finding(tmp_path: Path) -> None:
    cb = FullEvalSet()
    trainer = fast_trainer(tmp_path, callbacks=[cb], max_epochs=3, limit_train_batches=1, limit_val_batches=2)
    with pytest.warns(RecipeWarning, match="limit_val_batches=2") as record:
        trainer.fit(TinyClassifier(), loader(blobs(32), 16), loader(blobs(37), 8))
    assert sum(issubclass(w.category, RecipeWarning) for w in record) == 1
    assert findings_by_status(cb) == ["warn"]
    assert scalar_values(read_events(tmp_path / "run"), f"{TAG}/num_samples") == [16.0, 16.0, 16.0]


# ----------------------------------------------------------------------------- dataloaders, validate, test
def test_several_val_dataloaders_validate_and_test(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, first, second = TinyClassifier(), blobs(37, seed=1), blobs(20, seed=2)
    cb = FullEvalSet(metrics=["accuracy", "f1"])
    trainer = fast_trainer(tmp_path, callbacks=[cb])
    trainer.validate(model, [loader(first, 16), loader(second, 16)], verbose=False)
    trainer.test(model, loader(second, 6), verbose=False)

    ea = read_events(tmp_path / "run")
    for prefix, data in ((TAG, first), (f"{TAG}/dataloader_1", second), (f"{TAG}/test", second)):
        loss, accuracy = direct(model, data)
        assert scalar_values(ea, f"{prefix}/num_samples") == [len(data)]
        assert scalar_values(ea, f"{prefix}/loss") == [pytest.approx(loss, rel=1e-5)]
        assert scalar_values(ea, f"{prefix}/accuracy") == [pytest.approx(accuracy, rel=1e-5)]
        assert len(scalar_values(ea, f"{prefix}/f1")) == 1
    summaries = [f.summary for f in cb.findings]
    assert len(summaries) == 3
    assert summaries[0].startswith("val loss") and summaries[1].startswith("val dataloader 1 loss")
    assert summaries[2].startswith("test loss")


def test_metric_objects_given_in_code(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, val = TinyClassifier(), blobs(37, seed=1)
    cb = FullEvalSet(metrics={"top1": torchmetrics.Accuracy(task="multiclass", num_classes=4, average="micro")})
    trainer = fast_trainer(tmp_path, callbacks=[cb])
    trainer.validate(model, loader(val, 16), verbose=False)
    (finding,) = cb.findings
    assert finding.values["top1"] == pytest.approx(direct(model, val)[1], rel=1e-6)
    assert "top1_stderr" not in finding.values  # no per-sample decomposition known for a user metric


class Regressor(TinyClassifier):
    def __init__(self) -> None:
        super().__init__(num_classes=1)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        self.log("val_mse", F.mse_loss(self(x).squeeze(1), y))


def test_regression_task_is_inferred(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(30, 8)
    data = TensorDataset(x, x.sum(1) * 0.3)
    model, cb = Regressor(), FullEvalSet()
    trainer = fast_trainer(tmp_path, callbacks=[cb])
    trainer.validate(model, loader(data, 8), verbose=False)
    with torch.no_grad():
        error = model(x).squeeze(1).double() - x.sum(1).double() * 0.3
    (finding,) = cb.findings
    assert finding.values["loss"] == pytest.approx(float((error**2).mean()), rel=1e-5)
    assert finding.values["mae"] == pytest.approx(float(error.abs().mean()), rel=1e-5)


def test_binary_task_is_inferred(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x = torch.randn(29, 8)
    data = TensorDataset(x, (x[:, 0] > 0).float())
    model, cb = Regressor(), FullEvalSet()  # one output per sample, 0/1 targets: binary, BCE with logits
    trainer = fast_trainer(tmp_path, callbacks=[cb])
    trainer.validate(model, loader(data, 8), verbose=False)
    with torch.no_grad():
        logits = model(x).squeeze(1).double()
    target = data.tensors[1].double()
    (finding,) = cb.findings
    assert finding.values["loss"] == pytest.approx(float(F.binary_cross_entropy_with_logits(logits, target)), rel=1e-6)
    assert finding.values["accuracy"] == pytest.approx(float(((logits > 0).double() == target).double().mean()))


class TokenModel(pl.LightningModule):
    """A sequence model: (B, T) token ids in, (B, T, V) logits out, the class axis last."""

    def __init__(self, vocab: int = 5) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embed(x)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x).flatten(0, 1), y.flatten()))


def test_sequence_logits_with_the_class_axis_last_are_multiclass(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 5, (21, 6), generator=g)
    data = TensorDataset(tokens, tokens.roll(-1, dims=1))
    model, cb = TokenModel(), FullEvalSet()
    fast_trainer(tmp_path, callbacks=[cb]).validate(model, loader(data, 8), verbose=False)
    with torch.no_grad():
        logits = model(tokens).double()  # (21, 6, 5)
    target = data.tensors[1]
    per_sample = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").reshape(21, 6).mean(1)
    (finding,) = cb.findings
    assert finding.status == "pass", finding.message()
    assert finding.values["loss"] == pytest.approx(float(per_sample.mean()), rel=1e-6)
    assert finding.values["accuracy"] == pytest.approx(float((logits.argmax(-1) == target).double().mean()))


class NoForward(TinyClassifier):
    """No forward: validation_step calls self.net(x), so neither the hook nor an own pass sees logits."""

    forward = pl.LightningModule.forward  # type: ignore[assignment]

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.log("val_loss", F.cross_entropy(self.net(batch[0]), batch[1]))


@pytest.mark.parametrize(
    ("model", "kwargs", "reason"),
    [
        (TinyClassifier, {"input_key": "pixels"}, "input_key"),
        (TinyClassifier, {"task": "regression", "loss": "mse"}, "could not compute the per-sample loss"),
        (NoForward, {}, "did not call self(x)"),
    ],
)
def test_unreadable_batch_skips_with_a_reason(
    tmp_path: Path, model: type[TinyClassifier], kwargs: dict[str, Any], reason: str
) -> None:
    cb = FullEvalSet(**kwargs)
    trainer = fast_trainer(tmp_path, callbacks=[cb])
    trainer.validate(model(), loader(blobs(16), 8), verbose=False)  # no crash of the user's run
    (finding,) = cb.findings
    assert finding.status == "skip" and reason in finding.summary + finding.advice


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        ({"metrics": ["accuracy", "bogus"]}, ValueError, "metrics"),
        ({"metrics": "accuracy"}, TypeError, "metrics"),
        ({"metrics": {"acc": 3}}, TypeError, "metrics"),
        ({"task": "ranking"}, ValueError, "task"),
        ({"loss": "hinge"}, ValueError, "loss"),
        ({"num_classes": 1}, ValueError, "num_classes"),
        ({"confidence": 1.0}, ValueError, "confidence"),
        ({"on_fail": "explode"}, ValueError, "on_fail"),
    ],
)
def test_argument_errors_name_the_argument(kwargs: dict[str, Any], error: type[Exception], argument: str) -> None:
    with pytest.raises(error, match=rf"FullEvalSet\({argument}="):
        FullEvalSet(**kwargs)


# ----------------------------------------------------------------------------- DDP
def test_ddp_spawn_two_processes_odd_set_is_exact(tmp_path: Path) -> None:
    """13 samples over 2 processes: the sampler pads to 14. Count and mean are those of one process."""
    torch.manual_seed(0)
    model, val = SilentClassifier(), blobs(13, seed=1)
    trainer = fast_trainer(
        tmp_path,
        callbacks=[FullEvalSet(metrics=["accuracy", "f1"]), RecipeReport(print_report=False)],
        accelerator="cpu",
        devices=2,
        strategy="ddp_spawn",
        limit_train_batches=2,
    )
    trainer.fit(model, loader(blobs(64), 8), loader(val, 4))
    loss, accuracy = direct(model, val)  # ddp_spawn brings the trained weights back to this process
    assert accuracy not in (0.0, 1.0)  # a figure the padded sample can move

    ea = read_events(tmp_path / "run")
    assert scalar_values(ea, f"{TAG}/num_samples") == [13.0]
    assert scalar_values(ea, f"{TAG}/loss") == [pytest.approx(loss, rel=1e-5)]
    assert scalar_values(ea, f"{TAG}/accuracy") == [pytest.approx(accuracy, rel=1e-5)]
    with torch.no_grad():  # a torchmetrics metric, synced across processes by torchmetrics, padding left out
        f1 = torchmetrics.functional.f1_score(
            model(val.tensors[0]), val.tensors[1], "multiclass", num_classes=4, average="macro"
        )
    assert scalar_values(ea, f"{TAG}/f1") == [pytest.approx(float(f1), rel=1e-5)]
    (lightning_figure,) = scalar_values(ea, "val_loss")  # sync_dist averages, the padded sample counted twice
    assert lightning_figure != pytest.approx(loss, rel=1e-4)

    report = json.loads((tmp_path / "run" / "recipe_report.json").read_text())
    (finding,) = [f for f in report["findings"] if f["check"] == "FullEvalSet"]
    assert finding["status"] == "warn"
    assert "padded 13 samples to 14" in finding["summary"] and "n = 13" in finding["summary"]
    assert finding["values"]["padding_excluded"] == 1.0
    assert finding["values"]["cost_steps"] == 0.0  # the forward hook saw the logits under DDP too


@pytest.mark.parametrize(
    ("how", "reason"),
    [("no_loader", "no val dataloader"), ("empty", "no batches"), ("max_steps_1", "before the first validation")],
)
def test_a_fit_without_validation_ends_with_a_skip_not_pending(tmp_path: Path, how: str, reason: str) -> None:
    cb = FullEvalSet()
    empty = TensorDataset(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long))
    if how == "max_steps_1":
        trainer = fast_trainer(tmp_path, callbacks=[cb], max_steps=1, max_epochs=-1, val_check_interval=4)
        trainer.fit(TinyClassifier(), loader(blobs(64)), loader(blobs(16, seed=1)))
    else:
        trainer = fast_trainer(tmp_path, callbacks=[cb], max_steps=2)
        trainer.fit(TinyClassifier(), loader(blobs(32)), None if how == "no_loader" else loader(empty))
    (finding,) = cb.findings
    assert finding.status == "skip" and reason in finding.summary, finding.message()
    assert finding.advice


def test_fast_dev_run_is_no_coverage_warning(tmp_path: Path) -> None:
    cb = FullEvalSet()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fast_trainer(tmp_path, callbacks=[cb], fast_dev_run=True).fit(
            TinyClassifier(), loader(blobs(32)), loader(blobs(32, seed=1), 8)
        )
    assert not [w for w in record if issubclass(w.category, RecipeWarning)]
    (finding,) = cb.findings
    assert finding.status == "skip" and "fast_dev_run" in finding.summary and "limit_val_batches" not in finding.advice
    assert finding.values["num_samples"] == 8.0


class _Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return torch.nn.functional.mse_loss(self(batch[0]), batch[1])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def _regression_data(nan: bool) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=g)
    y = x.sum(dim=1)
    if nan:
        y[5] = math.nan  # planted: a missing target
    return TensorDataset(x, y)


def test_nan_targets_fail_instead_of_passing(tmp_path: Path) -> None:
    cb = FullEvalSet(on_fail="ignore")
    fast_trainer(tmp_path / "nan", callbacks=[cb], max_steps=2).fit(
        _Regressor(), loader(_regression_data(False)), loader(_regression_data(True))
    )
    (finding,) = cb.findings
    assert finding.status == "fail" and "not finite" in finding.summary, finding.message()
    healthy = FullEvalSet()
    fast_trainer(tmp_path / "ok", callbacks=[healthy], max_steps=2).fit(
        _Regressor(), loader(_regression_data(False)), loader(_regression_data(False))
    )
    assert healthy.findings[0].status == "pass", healthy.findings[0].message()
