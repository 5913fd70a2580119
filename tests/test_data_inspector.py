"""DataInspector on real Trainers: the planted bugs of recipe row 1 caught, a healthy data set passed."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from recipe_callbacks import DataInspector, RecipeCheckError, RecipeWarning
from tests.support import TinyClassifier, blobs, fast_trainer, finding_values, loader, read_events, text_values

TAG = "recipe.data_inspector"


@pytest.fixture(autouse=True)
def seeded() -> None:
    """Every test starts from the same weights, whatever ran before it in the same process."""
    pl.seed_everything(0, verbose=False)


class TinyCNN(TinyClassifier):
    """(N, 1, 8, 8) images, 4 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 64, 4))


def image_blobs(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randn(n, 1, 8, 8, generator=g)
    x[torch.arange(n), 0, y, y] += 3.0  # class c lights pixel (c, c)
    return TensorDataset(x, y)


def fit(root: Path, model: pl.LightningModule, train: Any, val: Any, callbacks: list[Any], **kw: Any) -> pl.Trainer:
    trainer = fast_trainer(root, callbacks=callbacks, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecipeWarning)
        trainer.fit(model, train, val)
    return trainer


def by_summary(cb: DataInspector, text: str) -> Any:
    found = [f for f in cb.findings if text in f.summary]
    assert len(found) == 1, [f.summary for f in cb.findings]
    return found[0]


def test_healthy_images_pass_and_the_hardest_samples_are_the_highest_loss(tmp_path: Path) -> None:
    pl.seed_everything(0)
    train, val = image_blobs(96, 0), image_blobs(40, 1)
    cb = DataInspector(top_k=6)
    model = TinyCNN()
    fit(tmp_path, model, loader(train, shuffle=True), loader(val, 16), [cb], max_epochs=2)
    labels = by_summary(cb, "label counts")
    assert labels.status == "pass" and labels.values["imbalance_ratio"] == 1.0
    leaks = by_summary(cb, "exact copies")
    assert leaks.status == "pass" and leaks.values["duplicates"] == 0 and leaks.values["checked_val"] == 40
    hardest = by_summary(cb, "highest-loss")
    # independent oracle: the trained model's per-sample cross-entropy on the whole validation set
    model.eval()
    with torch.no_grad():
        losses = F.cross_entropy(model(val.tensors[0]), val.tensors[1], reduction="none")
    oracle = sorted(range(40), key=lambda i: -float(losses[i]))[:6]
    assert cb.hardest_indices is not None and cb.hardest_losses is not None
    assert cb.hardest_indices.tolist() == oracle
    torch.testing.assert_close(cb.hardest_losses, losses[oracle].double(), rtol=1e-5, atol=1e-6)
    assert hardest.values["hardest_loss"] == pytest.approx(float(losses.max()), rel=1e-5)
    assert hardest.values["mean_val_loss"] == pytest.approx(float(losses.mean()), rel=1e-5)

    ea = read_events(tmp_path / "run")
    assert f"{TAG}/label_distribution" in ea.Tags()["images"]
    assert f"{TAG}/hardest_samples" in ea.Tags()["images"]
    counts = text_values(ea, f"{TAG}/label_counts")[-1]
    assert sum(int(line.split("|")[2]) for line in counts.splitlines()[2:]) == 96
    assert f"{TAG}/count/0" not in ea.Tags()["scalars"]  # one-time counts are text, not single-point charts
    table = text_values(ea, f"{TAG}/hardest_samples")[0]
    assert f"| 1 | {oracle[0]} |" in table


def test_labels_all_one_class_fail(tmp_path: Path) -> None:
    x = torch.randn(64, 8)
    train = TensorDataset(x, torch.zeros(64, dtype=torch.long))  # planted bug: every label 0
    cb = DataInspector(check_duplicates=False, show_hardest=False)
    fit(tmp_path, TinyClassifier(), loader(train), None, [cb], max_steps=1)
    f = by_summary(cb, "every label is class 0")
    assert f.status == "fail" and f.values["present_classes"] == 1
    trainer = fast_trainer(tmp_path / "raise", max_steps=1,
                           callbacks=[DataInspector(on_fail="raise", show_hardest=False)])
    with pytest.raises(RecipeCheckError, match="every label is class 0"):
        trainer.fit(TinyClassifier(), loader(train))


def test_extreme_imbalance_and_missing_classes_warn(tmp_path: Path) -> None:
    y = torch.tensor([0] * 62 + [1] * 2)
    cb = DataInspector(num_classes=3, check_duplicates=False, show_hardest=False)
    with pytest.warns(RecipeWarning, match="extremely imbalanced: classes \\[2\\] never occur"):
        trainer = fast_trainer(tmp_path, max_steps=1, callbacks=[cb])
        trainer.fit(TinyClassifier(num_classes=3), loader(TensorDataset(torch.randn(64, 8), y)))
    y = torch.tensor([0] * 62 + [1] * 2)
    cb = DataInspector(check_duplicates=False, show_hardest=False, max_imbalance=20.0)
    fit(tmp_path / "ratio", TinyClassifier(num_classes=2), loader(TensorDataset(torch.randn(64, 8), y)), None, [cb],
        max_steps=1)
    f = by_summary(cb, "extremely imbalanced")
    assert f.status == "warn" and f.values["imbalance_ratio"] == 31.0
    prior = cb.class_prior()
    assert prior is not None and prior.tolist() == pytest.approx([62 / 64, 2 / 64])


def test_samples_shared_by_train_and_val_fail(tmp_path: Path) -> None:
    train = blobs(64, seed=0)
    fresh = blobs(32, seed=1)
    leaked = [3, 10, 20, 33, 40, 51, 63]  # planted bug: 7 training samples copied into validation
    x = torch.cat([fresh.tensors[0][:25], train.tensors[0][leaked]])
    y = torch.cat([fresh.tensors[1][:25], train.tensors[1][leaked]])
    cb = DataInspector(show_hardest=False)
    fit(tmp_path, TinyClassifier(), loader(train), loader(TensorDataset(x, y)), [cb], max_steps=1)
    f = by_summary(cb, "exact copies")
    assert f.status == "fail"
    assert f.values["duplicates"] == 7 and f.values["checked_train"] == 64
    assert "[25, 26, 27, 28, 29, 30, 31]" in f.summary
    ea = read_events(tmp_path / "run")
    assert finding_values(ea, TAG)["duplicates"] == 7.0


class DictVectors(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = self.data[i]
        return {"input": x, "label": y}


class DictClassifier(TinyClassifier):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch["input"]), batch["label"])

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return F.cross_entropy(self(batch["input"]), batch["label"])


def test_dict_batches_of_vectors_list_the_hardest_in_a_table(tmp_path: Path) -> None:
    val = blobs(48, seed=5)
    cb = DataInspector(top_k=5, max_samples=30)  # bounded: 30 of 48 validation samples
    model = DictClassifier()
    fit(tmp_path, model, loader(DictVectors(blobs())), loader(DictVectors(val)), [cb], max_steps=2)
    hardest = by_summary(cb, "highest-loss")
    assert hardest.values["val_samples"] == 30
    assert cb.hardest_indices is not None and len(cb.hardest_indices) == 5
    model.eval()
    with torch.no_grad():
        losses = F.cross_entropy(model(val.tensors[0]), val.tensors[1], reduction="none")
    # the subset's positions are dataset indices: their losses are the ones recomputed here
    assert cb.hardest_losses is not None
    torch.testing.assert_close(cb.hardest_losses, losses[cb.hardest_indices].double(), rtol=1e-5, atol=1e-6)
    ea = read_events(tmp_path / "run")
    assert f"{TAG}/hardest_samples" not in ea.Tags()["images"]
    assert "| rank | sample | loss | label | prediction |" in text_values(ea, f"{TAG}/hardest_samples")[0]


class Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return F.mse_loss(self(batch[0]), batch[1])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", F.mse_loss(self(batch[0]), batch[1]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_continuous_targets_get_a_histogram_and_no_prior(tmp_path: Path) -> None:
    x = torch.randn(64, 8)
    data = TensorDataset(x, x[:, :1] * 2 + 0.5)
    cb = DataInspector(top_k=3)
    fit(tmp_path, Regressor(), loader(data), loader(data), [cb], max_steps=1)
    assert by_summary(cb, "continuous").status == "pass"
    assert cb.class_prior() is None
    assert by_summary(cb, "highest-loss").values["val_samples"] == 64
    assert f"{TAG}/targets" in read_events(tmp_path / "run").Tags()["histograms"]


def test_class_prior_is_counted_on_demand_before_on_train_start(tmp_path: Path) -> None:
    seen: list[Any] = []

    class Asker(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            seen.append(inspector.class_prior(trainer))

    inspector = DataInspector(show_hardest=False, check_duplicates=False)
    fit(tmp_path, TinyClassifier(), loader(blobs()), None, [Asker(), inspector], max_steps=1)
    assert seen[0] is not None and seen[0].tolist() == [0.25] * 4
    assert len([f for f in inspector.findings if "label counts" in f.summary]) == 1  # counted once


class Pair:
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y


def collate_pairs(items: list[tuple[torch.Tensor, torch.Tensor]]) -> Pair:
    return Pair(torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items]))


class PairClassifier(TinyClassifier):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch.x), batch.y)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return F.cross_entropy(self(batch.x), batch.y)


def test_custom_batches_skip_naming_batch_to_xy_and_work_when_it_is_given(tmp_path: Path) -> None:
    train, val = loader(blobs(), collate_fn=collate_pairs), loader(blobs(seed=2), collate_fn=collate_pairs)
    cb = DataInspector()
    trainer = fit(tmp_path, PairClassifier(), train, val, [cb], max_steps=2)
    assert trainer.global_step == 2
    assert [f.status for f in cb.findings] == ["skip", "skip", "skip"]
    assert all("DataInspector(batch_to_xy=...)" in f.advice for f in cb.findings)
    given = DataInspector(batch_to_xy=lambda b: (b.x, b.y), top_k=4)
    fit(tmp_path / "given", PairClassifier(), train, val, [given], max_steps=2)
    assert [f.status for f in given.findings] == ["pass", "pass", "pass"]


def test_no_validation_data_is_a_skip(tmp_path: Path) -> None:
    cb = DataInspector()
    fit(tmp_path, TinyClassifier(), loader(blobs()), None, [cb], max_steps=1)
    statuses = {f.summary.split(" ")[0]: f.status for f in cb.findings}
    assert statuses["label"] == "pass"
    assert sum(f.status == "skip" and "validation" in f.summary for f in cb.findings) == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_samples": 0}, ValueError, r"DataInspector\(max_samples=0\): max_samples"),
        ({"top_k": "3"}, TypeError, r"DataInspector\(top_k='3'\): top_k"),
        ({"max_imbalance": 0.5}, ValueError, r"DataInspector\(max_imbalance=0.5\): max_imbalance"),
        ({"task": "ranking"}, ValueError, r"DataInspector\(task='ranking'\): task"),
        ({"show_hardest": 1}, TypeError, r"DataInspector\(show_hardest=1\): show_hardest"),
        ({"num_classes": 1}, ValueError, r"DataInspector\(num_classes=1\): num_classes"),
    ],
)
def test_argument_errors_name_the_argument(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        DataInspector(**kwargs)


def test_dense_token_labels_are_counted_but_their_imbalance_is_not_judged(tmp_path: Path) -> None:
    from tests.test_init_loss_check import TinyLM

    g = torch.Generator().manual_seed(0)
    tokens = torch.where(torch.rand(32, 9, generator=g) < 0.9, 0, torch.randint(0, 12, (32, 9), generator=g))
    cb = DataInspector(show_hardest=False, check_duplicates=False)
    fit(tmp_path, TinyLM(), loader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), 8), None, [cb], max_steps=1)
    f = by_summary(cb, "label counts")
    assert f.status == "pass" and f.values["imbalance_ratio"] > 20
    assert "not judged" in f.summary
    counts = torch.bincount(tokens[:, 1:].flatten(), minlength=12).double()
    prior = cb.class_prior()
    assert prior is not None
    torch.testing.assert_close(prior, counts / counts.sum())


class TwoArgClassifier(TinyClassifier):
    """forward needs a second argument: the check's forward(x) cannot run, training can."""

    def forward(self, x: torch.Tensor, scale: float) -> torch.Tensor:  # type: ignore[override]
        return self.net(x) * scale

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[0], 1.0), batch[1])

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return F.cross_entropy(self(batch[0], 1.0), batch[1])


def test_a_forward_that_needs_more_than_x_is_a_skip_not_a_crash(tmp_path: Path) -> None:
    from recipe_callbacks import InitLossCheck

    cb, init = DataInspector(), InitLossCheck()
    trainer = fit(tmp_path, TwoArgClassifier(), loader(blobs()), loader(blobs(seed=1)), [cb, init], max_steps=2)
    assert trainer.global_step == 2
    hardest = [f for f in cb.findings if "running the model on the batch failed" in f.summary]
    assert len(hardest) == 1 and hardest[0].status == "skip"
    assert "DataInspector(forward_fn=...)" in hardest[0].advice
    # InitLossCheck needs no forward of its own: the first step's hook saw self(x, 1.0)
    assert [f.status for f in init.findings] == ["pass"]


def test_nan_targets_fail_instead_of_passing(tmp_path: Path) -> None:
    from tests.test_full_eval_set import _regression_data, _Regressor

    cb = DataInspector(on_fail="ignore")
    fast_trainer(tmp_path / "nan", callbacks=[cb], max_steps=2).fit(_Regressor(), loader(_regression_data(True)))
    labels = next(f for f in cb.findings if "target" in f.summary)
    assert labels.status == "fail" and "NaN" in labels.summary and labels.values["nonfinite_targets"] == 1.0
    healthy = DataInspector()
    fast_trainer(tmp_path / "ok", callbacks=[healthy], max_steps=2).fit(_Regressor(), loader(_regression_data(False)))
    assert all(f.status in ("pass", "skip") for f in healthy.findings), [f.message() for f in healthy.findings]


def test_x_mask_y_batches_count_the_labels_not_the_mask(tmp_path: Path) -> None:
    class MaskedClassifier(TinyClassifier):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, mask, y = batch
            return torch.nn.functional.cross_entropy(self(x * mask), y)

    x, y = blobs(64).tensors
    mask = torch.ones_like(x)
    mask[:, 6:] = 0.0  # the last two features padded
    cb = DataInspector()
    fast_trainer(tmp_path, callbacks=[cb], max_steps=2).fit(
        MaskedClassifier(), loader(torch.utils.data.TensorDataset(x, mask, y))
    )
    labels = next(f for f in cb.findings if "class" in f.summary)
    assert labels.status == "pass", labels.message()
    assert labels.values.get("num_classes", 4.0) == 4.0 and "4 classes" in labels.summary


def test_forward_fn_runs_the_model_the_way_the_step_does(tmp_path: Path) -> None:
    cb = DataInspector(forward_fn=lambda module, batch: module(batch[0], 1.0))
    fit(tmp_path, TwoArgClassifier(), loader(blobs()), loader(blobs(seed=1)), [cb], max_steps=2)
    assert not [f for f in cb.findings if f.status == "skip"], [f.summary for f in cb.findings]
    assert any("hardest" in f.summary or "highest" in f.summary for f in cb.findings), [f.summary for f in cb.findings]
