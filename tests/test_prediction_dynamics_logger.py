"""PredictionDynamicsLogger on real Trainers: jitter of a too-high learning rate, resume, pictures."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from recipe_callbacks import RecipeWarning
from recipe_callbacks.core.pictures import FIGURE_SHAPE
from recipe_callbacks.first_layer_filter_viz import FirstLayerFilterViz
from recipe_callbacks.prediction_dynamics_logger import PredictionDynamicsLogger
from tests.support import TinyClassifier, blobs, fast_trainer, finding_values, loader, read_events, scalar_values

TAG = "recipe.prediction_dynamics_logger"


def fit_blobs(root: Path, lr: float, epochs: int = 15, **kw: Any) -> tuple[PredictionDynamicsLogger, pl.Trainer]:
    pl.seed_everything(0, verbose=False)
    cb = PredictionDynamicsLogger(num_samples=16, every_n_steps=2, **kw)
    trainer = fast_trainer(root, max_epochs=epochs, callbacks=[cb])
    trainer.fit(TinyClassifier(lr=lr), loader(blobs(128, seed=0), shuffle=True), loader(blobs(64, seed=1)))
    return cb, trainer


def image(ea: Any, tag: str, index: int = -1) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(ea.Images(tag)[index].encoded_image_string)).convert("RGB"))


def test_too_high_learning_rate_jitters_and_is_flagged(tmp_path: Path) -> None:
    sane, _ = fit_blobs(tmp_path / "sane", lr=0.05)
    with pytest.warns(RecipeWarning, match="learning rate"):
        high, _ = fit_blobs(tmp_path / "high", lr=5.0)
    sane_f, high_f = sane.findings[-1], high.findings[-1]
    assert sane_f.status == "pass", sane_f.message()
    assert high_f.status == "warn", high_f.message()
    assert "learning rate (5)" in high_f.advice
    assert high_f.values["late_jitter"] > 10 * sane_f.values["late_jitter"]
    assert high_f.values["late_flip_rate"] > 0.2 > sane_f.values["late_flip_rate"]
    assert high_f.values["back_and_forth"] > 0.9  # the high-LR predictions go back and forth
    # What TensorBoard shows: the jitter scalars, late in training, tell the two runs apart.
    sane_ea, high_ea = read_events(tmp_path / "sane" / "run"), read_events(tmp_path / "high" / "run")
    sane_jitter, high_jitter = scalar_values(sane_ea, f"{TAG}/jitter"), scalar_values(high_ea, f"{TAG}/jitter")
    assert len(sane_jitter) == len(high_jitter) == 60  # 120 steps, every 2 steps, the first record has none
    assert np.mean(high_jitter[30:]) > 10 * np.mean(sane_jitter[30:])
    assert len(scalar_values(high_ea, f"{TAG}/flip_rate")) == 60
    assert len(scalar_values(high_ea, f"{TAG}/fixed_batch_loss")) == 61
    assert finding_values(high_ea, TAG)["late_jitter"] == pytest.approx(high_f.values["late_jitter"], rel=1e-3)
    # Heat map: a figure of 16 samples x 61 records, colour = probability of the true class.
    heat = image(sane_ea, f"{TAG}/heatmap")
    assert heat.shape == FIGURE_SHAPE
    assert sane.heatmap_matrix().shape == (16, 61)
    assert float(sane.heatmap_matrix()[:, -1].mean()) > 0.9  # the sane run ends confident and right


def fit_uncertain_blobs(root: Path, **kw: Any) -> PredictionDynamicsLogger:
    """Heavily overlapping blobs (inputs scaled by 0.02) at a sane learning rate: the predictions stay
    near-uniform, as a healthy ViT's are early in training, and their argmax changes with every step."""
    pl.seed_everything(0, verbose=False)
    train, val = (TensorDataset(x * 0.02, y) for x, y in (blobs(128, seed=0).tensors, blobs(64, seed=1).tensors))
    cb = PredictionDynamicsLogger(num_samples=16, every_n_steps=2, **kw)
    fast_trainer(root, max_epochs=15, callbacks=[cb]).fit(TinyClassifier(lr=0.05), loader(train, shuffle=True),
                                                          loader(val))
    return cb


def test_flips_among_near_uniform_predictions_are_not_a_high_learning_rate(tmp_path: Path) -> None:
    # Counting every argmax change (min_confidence=0, the old rule) cried wolf at this sane rate.
    counted_all = fit_uncertain_blobs(tmp_path / "all", min_confidence=0.0, on_fail="ignore").findings[-1]
    assert counted_all.status == "warn" and counted_all.values["late_flip_rate"] > 0.3
    finding = fit_uncertain_blobs(tmp_path / "confident").findings[-1]
    assert finding.status == "pass", finding.message()
    assert finding.values["late_flip_rate"] == 0.0 and "confident" in finding.summary


def test_divergence_to_nan_fails(tmp_path: Path) -> None:
    cb, _ = fit_blobs(tmp_path, lr=10.0, on_fail="ignore")
    finding = cb.findings[-1]
    assert finding.status == "fail" and "NaN" in finding.summary
    assert "learning rate" in finding.advice


def test_fixed_samples_are_the_same_across_the_run_and_after_resume(tmp_path: Path) -> None:
    train, val = blobs(64, seed=0), blobs(32, seed=1)
    pl.seed_everything(0, verbose=False)
    first = PredictionDynamicsLogger(num_samples=6, every_n_steps=2, on_fail="ignore")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    trainer = fast_trainer(tmp_path, max_epochs=2, callbacks=[first, ckpt], enable_checkpointing=True)
    trainer.fit(TinyClassifier(), loader(train), loader(val))
    assert torch.equal(first.sample_x, val.tensors[0][:6]) and torch.equal(first.sample_y, val.tensors[1][:6])
    assert first.sample_indices is not None and first.sample_indices.tolist() == list(range(6))
    steps_before = list(first.history.steps)
    assert steps_before == list(range(0, 9, 2))

    # Resume with the validation set in another order: the watched samples must not change.
    reordered = TensorDataset(val.tensors[0].flip(0), val.tensors[1].flip(0))
    second = PredictionDynamicsLogger(num_samples=6, every_n_steps=2, on_fail="ignore")
    trainer = fast_trainer(tmp_path, max_epochs=4, callbacks=[second], enable_checkpointing=True)
    last = str(tmp_path / "ckpt" / "last.ckpt")
    trainer.fit(TinyClassifier(), loader(train), loader(reordered), ckpt_path=last)
    assert second.sample_x is not None and torch.equal(second.sample_x, first.sample_x)
    assert torch.equal(second.sample_y, first.sample_y)
    assert second.history.steps[: len(steps_before)] == steps_before  # the history continued
    assert second.history.steps[-1] == 16
    assert second.heatmap_matrix().shape == (6, 9)
    # The jitter right after the resume compares with the last record before it, not with nothing.
    assert np.isfinite(second.history.jitters[len(steps_before)])


class ImageNet(pl.LightningModule):
    """A tiny CNN on dict batches {"image": (N, 1, 8, 8), "label": (N,)}."""

    def __init__(self, lr: float = 0.1, out: int = 3) -> None:
        super().__init__()
        self.lr, self.out = lr, out
        self.net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(256, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        out = self(batch["image"])
        if self.out == 1:
            return nn.functional.mse_loss(out.squeeze(1), batch["label"])
        return nn.functional.cross_entropy(out, batch["label"])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class DictImages(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int, regression: bool = False) -> None:
        g = torch.Generator().manual_seed(0)
        self.y = torch.arange(n) % 3
        self.x = torch.rand(n, 1, 8, 8, generator=g) * 0.2
        for i in range(n):  # class c lights up band c of rows
            self.x[i, 0, 2 * int(self.y[i]) : 2 * int(self.y[i]) + 2] += 1.0
        self.regression = regression

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        label = self.y[i].float() if self.regression else self.y[i]
        return {"image": self.x[i], "label": label}


def test_dict_image_batches_give_a_captioned_grid(tmp_path: Path) -> None:
    cb = PredictionDynamicsLogger(num_samples=4, every_n_steps=2, indices=[5, 0, 1, 2], on_fail="ignore")
    trainer = fast_trainer(tmp_path, max_epochs=6, callbacks=[cb])
    pl.seed_everything(0, verbose=False)
    trainer.fit(ImageNet(), loader(DictImages(48), shuffle=True), loader(DictImages(12)))
    val = DictImages(12)
    assert torch.equal(cb.sample_x, val.x[[5, 0, 1, 2]])
    ea = read_events(tmp_path / "run")
    grid = image(ea, f"{TAG}/samples")
    assert grid.shape == (2 + 2 * (48 + 12 + 2), 2 + 2 * (48 + 2), 3)  # 2x2 tiles of 48 px + captions
    assert cb.findings[-1].status == "pass", cb.findings[-1].message()


def test_regression_tracks_the_error(tmp_path: Path) -> None:
    cb = PredictionDynamicsLogger(num_samples=4, every_n_steps=2, on_fail="ignore")
    trainer = fast_trainer(tmp_path, max_epochs=4, callbacks=[cb])
    pl.seed_everything(0, verbose=False)
    trainer.fit(ImageNet(lr=0.01, out=1), loader(DictImages(48, True), shuffle=True), loader(DictImages(12, True)))
    ea = read_events(tmp_path / "run")
    assert f"{TAG}/jitter" in ea.Tags()["scalars"]
    assert f"{TAG}/flip_rate" not in ea.Tags()["scalars"]
    finding = cb.findings[-1]
    assert finding.status == "pass" and "late_flip_rate" not in finding.values
    # Still learning after warm-up: the predictions move a lot, but in one direction.
    assert finding.values["late_jitter"] > 0.1 and finding.values["back_and_forth"] < 0.5
    assert "steadily" in finding.summary
    # The heat map shows the absolute error: the last column is |prediction - label| per sample.
    model = trainer.lightning_module.eval()
    with torch.no_grad():
        error = (model(cb.sample_x).squeeze(1) - cb.sample_y).abs()
    torch.testing.assert_close(cb.heatmap_matrix()[:, -1], error, rtol=1e-5, atol=1e-6)


def test_history_is_capped(tmp_path: Path) -> None:
    cb = PredictionDynamicsLogger(num_samples=4, every_n_steps=1, max_records=8, on_fail="ignore")
    trainer = fast_trainer(tmp_path, max_epochs=10, callbacks=[cb], logger=False)
    trainer.fit(TinyClassifier(), loader(blobs(64), batch_size=16), loader(blobs(16, seed=1)))
    assert trainer.global_step == 40
    assert len(cb.history.steps) <= 8 and cb.history.steps[-1] == 40
    assert cb.history.steps == sorted(cb.history.steps) and cb.history.steps[0] <= 8  # spans the whole run
    assert cb.heatmap_matrix().shape == (4, len(cb.history.steps))
    # Without a logger the pictures land as PNG files in the run's directory.
    assert list((tmp_path / "recipe" / "prediction_dynamics_logger" / "heatmap").glob("*.png"))


class QuietValidation(TinyClassifier):
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        pass


def test_cannot_run_situations_skip_naming_the_argument(tmp_path: Path) -> None:
    cb = PredictionDynamicsLogger(num_samples=4, every_n_steps=2)
    trainer = fast_trainer(tmp_path, max_epochs=1, callbacks=[cb], logger=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecipeWarning)  # a skip is not a warning
        trainer.fit(TinyClassifier(), loader(blobs(32)))  # no validation data
    assert cb.findings[-1].status == "skip" and "source" in cb.findings[-1].advice

    cb = PredictionDynamicsLogger(indices=[0, 99], every_n_steps=2)
    fast_trainer(tmp_path, callbacks=[cb], logger=False).fit(TinyClassifier(), loader(blobs(32)), loader(blobs(16)))
    assert cb.findings[-1].status == "skip" and "indices" in cb.findings[-1].advice

    cb = PredictionDynamicsLogger(num_samples=4, every_n_steps=1000)
    fast_trainer(tmp_path, callbacks=[cb], logger=False).fit(TinyClassifier(), loader(blobs(32)), loader(blobs(16)))
    assert cb.findings[-1].status == "skip" and "every_n_steps" in cb.findings[-1].advice

    cb = PredictionDynamicsLogger(num_samples=4, every_n_steps=1, source="train", task="regression")
    fast_trainer(tmp_path, callbacks=[cb], logger=False).fit(TinyClassifier(), loader(blobs(32)))
    assert cb.findings[-1].status == "skip" and "task" in cb.findings[-1].advice

    # Float targets (regression by default) that do not fit 4 outputs per sample.
    floats = TensorDataset(blobs(16).tensors[0], torch.zeros(16))
    cb = PredictionDynamicsLogger(num_samples=4, every_n_steps=1)
    fast_trainer(tmp_path, callbacks=[cb], logger=False).fit(QuietValidation(), loader(blobs(32)), loader(floats))
    assert cb.findings[-1].status == "skip" and "task" in cb.findings[-1].advice
    assert "differ in size" in cb.findings[-1].summary


class BinaryLogit(pl.LightningModule):
    """One logit per sample trained with BCE on float 0/1 targets."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(self(batch[0]).squeeze(1), batch[1])

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_float_zero_one_targets_are_binary_as_in_the_other_checks(tmp_path: Path) -> None:
    # core.task's rule: one logit per target and 0/1 targets (float ones too) is binary, not regression.
    x = blobs(48).tensors[0]
    data = TensorDataset(x, (x[:, 0] > 1.5).float())
    cb = PredictionDynamicsLogger(num_samples=8, every_n_steps=1, on_fail="ignore")
    trainer = fast_trainer(tmp_path, max_epochs=2, callbacks=[cb])
    pl.seed_everything(0, verbose=False)
    trainer.fit(BinaryLogit(), loader(data), loader(data))
    assert f"{TAG}/flip_rate" in read_events(tmp_path / "run").Tags()["scalars"]
    model = trainer.lightning_module.eval()
    with torch.no_grad():
        logit = model(cb.sample_x).squeeze(1).double()
    target = cb.sample_y.double()
    p_true = torch.where(target == 1, logit.sigmoid(), 1 - logit.sigmoid())
    torch.testing.assert_close(cb.heatmap_matrix()[:, -1].double(), p_true, rtol=1e-5, atol=1e-6)
    bce = float(nn.functional.binary_cross_entropy_with_logits(logit, target))
    assert cb.history.losses[-1] == pytest.approx(bce, rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        ({"num_samples": 0}, ValueError, "num_samples"),
        ({"every_n_steps": 1.5}, TypeError, "every_n_steps"),
        ({"indices": [0, -1]}, ValueError, "indices"),
        ({"indices": []}, TypeError, "indices"),
        ({"source": "test"}, ValueError, "source"),
        ({"task": "segmentation"}, ValueError, "task"),
        ({"max_flip_rate": 1.5}, ValueError, "max_flip_rate"),
        ({"min_confidence": 1.5}, ValueError, "min_confidence"),
        ({"warmup_fraction": 1.0}, ValueError, "warmup_fraction"),
        ({"max_records": 2}, ValueError, "max_records"),
        ({"on_fail": "explode"}, ValueError, "on_fail"),
    ],
)
def test_argument_errors_name_the_argument(kwargs: dict[str, Any], error: type[Exception], argument: str) -> None:
    with pytest.raises(error, match=rf"PredictionDynamicsLogger\({argument}="):
        PredictionDynamicsLogger(**kwargs)


def test_under_ddp_spawn_rank_zero_logs(tmp_path: Path) -> None:
    # Both picture monitors of the issue, on 2 processes; only rank 0 writes.
    cb = PredictionDynamicsLogger(num_samples=4, every_n_steps=1, on_fail="ignore")
    filters = FirstLayerFilterViz(on_fail="ignore")
    trainer = fast_trainer(tmp_path, max_epochs=2, callbacks=[cb, filters], devices=2, strategy="ddp_spawn")
    trainer.fit(ImageNet(), loader(DictImages(32), batch_size=4), loader(DictImages(8)))
    ea = read_events(tmp_path / "run")
    jitter_values = scalar_values(ea, f"{TAG}/jitter")
    assert len(jitter_values) == 8  # 2 epochs x 4 steps per rank, one writer
    assert np.isfinite(jitter_values).all()
    assert len(ea.Images(f"{TAG}/heatmap")) >= 1
    assert len(ea.Images(f"{TAG}/samples")) >= 1
    assert len(scalar_values(ea, "recipe.first_layer_filter_viz/noise_score")) == 3  # start, 2 epoch ends
    assert len(ea.Images("recipe.first_layer_filter_viz/filters")) == 3


@pytest.mark.parametrize("precision", ["64-true", "bf16-mixed"])
def test_other_precisions(tmp_path: Path, precision: str) -> None:
    cb = PredictionDynamicsLogger(num_samples=4, every_n_steps=1, on_fail="ignore")
    filters = FirstLayerFilterViz(image_shape=[2, 4], min_kernel_size=8, min_weight_change=0.01, on_fail="ignore")
    trainer = fast_trainer(tmp_path, max_epochs=3, callbacks=[cb, filters], logger=False, precision=precision)
    trainer.fit(TinyClassifier(), loader(blobs(32)), loader(blobs(16, seed=1)))
    assert cb.findings[-1].status == "pass", cb.findings[-1].message()
    assert filters.findings[-1].status != "skip", filters.findings[-1].message()


def test_a_record_reads_the_forward_signature_once_per_fit_and_writes_one_tensorboard_event(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import inspect

    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    from recipe_callbacks.plumbing import batch

    batch._FORWARD_PARAMETERS.clear()
    signatures = []
    original = inspect.signature
    monkeypatch.setattr(batch.inspect, "signature", lambda f, *a, **k: (signatures.append(f), original(f, *a, **k))[1])
    cb, trainer = fit_blobs(tmp_path, lr=0.05, epochs=3)
    assert len(cb.history.steps) == 13  # 24 steps, every 2 steps, and the first
    assert [getattr(f, "__name__", "") for f in signatures].count("forward") == 1  # was one per record
    events = [e for path in sorted(Path(trainer.logger.log_dir).glob("events.out.tfevents.*"))
              for e in EventFileLoader(str(path)).Load() if any(v.tag.startswith(TAG) for v in e.summary.value)]
    names = {"fixed_batch_loss", "flip_rate", "jitter"}
    scalars = [sorted(v.tag.removeprefix(f"{TAG}/") for v in e.summary.value if v.tag.removeprefix(f"{TAG}/") in names)
               for e in events]
    assert scalars.count(["fixed_batch_loss", "flip_rate", "jitter"]) == 12  # one event per record (was three)
    assert scalars.count(["fixed_batch_loss"]) == 1  # the first record: no change to measure yet


def test_records_summarised_a_few_at_a_time_keep_and_log_what_one_at_a_time_would(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from recipe_callbacks.core import prediction_jitter as module

    held: list[int] = []
    summarise = PredictionDynamicsLogger._summarise
    monkeypatch.setattr(PredictionDynamicsLogger, "_summarise",
                        lambda self: (held.append(len(self._held)), summarise(self))[1])
    runs = {}
    for records in (1, module.HELD_RECORDS):
        monkeypatch.setattr(module, "HELD_RECORDS", records)
        held.clear()
        cb, trainer = fit_blobs(tmp_path / str(records), lr=0.05, epochs=3)
        ea = read_events(trainer.logger.log_dir)
        runs[records] = (cb.history.steps, cb.history.jitters, cb.history.losses, cb.heatmap_matrix(),
                         [(e.step, e.value) for e in ea.Scalars(f"{TAG}/jitter")], max(held))
    one, few = runs[1], runs[module.HELD_RECORDS]
    assert one[-1] == 1 and few[-1] == module.HELD_RECORDS  # held up to 8 records at once
    assert one[0] == few[0] and len(one[0]) == 13
    np.testing.assert_array_equal(np.asarray(one[1]), np.asarray(few[1]))
    assert one[2] == few[2] and torch.equal(one[3], few[3]) and one[4] == few[4] and len(one[4]) == 12
