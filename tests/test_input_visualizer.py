"""InputVisualizer on a real Trainer: the planted input bugs it catches, a healthy batch it passes,
and what it writes to TensorBoard (read back from the event files)."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from recipe_callbacks import RecipeCheckError, RecipeWarning
from recipe_callbacks.input_visualizer import InputVisualizer
from tests.support import TinyClassifier, fast_trainer, finding_values, read_events, text_values

TAG = "recipe.input_visualizer"


class FlatClassifier(TinyClassifier):
    """Flattens any input shape, so every planted layout bug trains silently, as in real life."""

    def __init__(self, in_dim: int = 64, dropout: float = 0.0) -> None:
        super().__init__(in_dim=in_dim)
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_dim, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 4))


def images(n: int = 64, shape: tuple[int, ...] = (1, 8, 8), seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardised random images (mean 0, std 1) and labels cycling through 0..3."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, *shape, generator=g)
    y = torch.arange(n) % 4
    return x, y


def run(
    root: Path, x: torch.Tensor, y: torch.Tensor, *, steps: int = 1, **kwargs: Any
) -> tuple[InputVisualizer, Any]:
    cb = InputVisualizer(**kwargs)
    trainer = fast_trainer(root, callbacks=[cb], max_steps=steps, max_epochs=5)
    trainer.fit(FlatClassifier(in_dim=x[0].numel()), DataLoader(TensorDataset(x, y), batch_size=16))
    return cb, read_events(root / "run")


def channel_row(ea: Any, channel: int) -> list[float]:
    """mean, std, min, max, NaN, Inf of one channel, from the summary text's table."""
    for line in text_values(ea, f"{TAG}/summary")[-1].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == str(channel):
            return [float(c) for c in cells[1:]]
    raise AssertionError(f"no row for channel {channel}")


def status(cb: InputVisualizer) -> str:
    return cb.findings[0].status


def picture(ea: Any) -> np.ndarray:
    event = ea.Images(f"{TAG}/images")[0]
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)))


# ----------------------------------------------------------------- healthy
def test_healthy_images_pass_and_everything_is_logged(tmp_path: Path) -> None:
    x, y = images()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecipeWarning)
        cb, ea = run(tmp_path, x, y)
    assert status(cb) == "pass" and "healthy" in cb.findings[0].summary
    first = x[:16]  # no shuffling: the first batch is the first 16 samples
    # a single look is one-time: its numbers are text (the summary's table and the Finding), not scalars
    assert channel_row(ea, 0)[0] == pytest.approx(float(first.double().mean()), rel=1e-2, abs=1e-3)
    shown = finding_values(ea, TAG)
    assert shown["std"] == pytest.approx(float(first.double().std(unbiased=False)), rel=1e-3)
    assert shown["max"] == pytest.approx(float(first.max()), rel=1e-3)
    assert shown["nan_count"] == 0.0
    assert not [t for t in ea.Tags()["scalars"] if t.startswith(TAG)]
    assert picture(ea).ndim == 3
    assert {f"{TAG}/input_values", f"{TAG}/targets"} <= set(ea.Tags()["histograms"])
    text = text_values(ea, f"{TAG}/summary")[0]
    assert "(16, 1, 8, 8)" in text and "torch.float32" in text and "**flags**: none" in text
    assert "first values `[0, 1, 2, 3" in text


def test_images_in_0_1_pass_and_the_grid_is_bounded(tmp_path: Path) -> None:
    x, y = images(n=80, shape=(3, 8, 8))
    x = torch.sigmoid(x)  # RGB in 0..1, as ToTensor gives
    cb, ea = run(tmp_path, x, y, max_images=4)
    assert status(cb) == "pass"
    # 4 tiles of 8x8 enlarged 6x to 48 px, 2 columns, with a caption row: at most 2 rows of tiles.
    assert picture(ea).shape[0] < 2 * (48 + 12 + 2) + 3


def test_features_are_histograms_not_images(tmp_path: Path) -> None:
    x, y = torch.randn(64, 8), torch.arange(64) % 4
    cb, ea = run(tmp_path, x, y)
    assert status(cb) == "pass"
    assert ea.Tags()["images"] == []
    assert f"{TAG}/input_values" in ea.Tags()["histograms"]
    assert len(channel_row(ea, 7)) == 6  # the 8 features are 8 channels of the summary's table


def test_dict_batches_work(tmp_path: Path) -> None:
    class DictModel(FlatClassifier):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return nn.functional.cross_entropy(self(batch["image"]), batch["label"])

    x, y = images()
    data = [{"image": a, "label": b} for a, b in zip(x, y, strict=True)]
    cb = InputVisualizer()
    fast_trainer(tmp_path, callbacks=[cb], max_steps=1).fit(DictModel(), DataLoader(data, batch_size=16))  # type: ignore[arg-type]
    assert status(cb) == "pass" and "(16, 1, 8, 8)" in cb.findings[0].summary


# ----------------------------------------------------------------- planted bugs
def test_raw_0_255_pixels_are_flagged_unnormalised(tmp_path: Path) -> None:
    x, y = images()
    raw = torch.round(torch.sigmoid(x) * 255)  # planted bug: pixels never divided by 255
    with pytest.warns(RecipeWarning, match="unnormalised"):
        cb, ea = run(tmp_path, raw, y)
    f = cb.findings[0]
    assert f.status == "warn" and "0..255 pixels" in f.summary
    assert f.values["max_channel_rms"] > 5.0
    assert finding_values(ea, TAG)["max"] <= 255.0


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_uint8_images_are_flagged(tmp_path: Path, dtype: torch.dtype) -> None:
    # int64 0..255 pixels (as read from a file or a NumPy array) used to pass as healthy.
    x, y = images()
    raw = torch.round(torch.sigmoid(x) * 255).to(dtype)

    class CastModel(FlatClassifier):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.float())

    cb = InputVisualizer()
    with pytest.warns(RecipeWarning, match=str(dtype).replace("torch.", "")):
        fast_trainer(tmp_path, callbacks=[cb], max_steps=1).fit(CastModel(), DataLoader(TensorDataset(raw, y), 16))
    assert cb.findings[0].status == "warn" and "normalised floats" in cb.findings[0].summary


def test_nan_in_batch_fails_and_raise_stops_training(tmp_path: Path) -> None:
    x, y = images()
    x[3, 0, 2, 2] = float("nan")  # planted bug: a NaN in the first batch
    x[5, 0, 1, 1] = float("inf")
    with pytest.warns(RecipeWarning, match="NaN"):
        cb, ea = run(tmp_path / "warn", x, y)
    assert status(cb) == "fail"
    assert cb.findings[0].values["nan_count"] == 1.0 and cb.findings[0].values["inf_count"] == 1.0
    assert finding_values(ea, TAG)["nan_count"] == 1.0
    with pytest.raises(RecipeCheckError, match="NaN"):
        run(tmp_path / "raise", x, y, on_fail="raise")


def test_constant_input_fails(tmp_path: Path) -> None:
    x, y = images()
    with pytest.warns(RecipeWarning, match="every value of the input equals 0"):
        cb, _ = run(tmp_path, torch.zeros_like(x), y)  # planted bug: a pipeline that feeds zeros
    assert status(cb) == "fail"


def test_identical_samples_fail(tmp_path: Path) -> None:
    x, y = images()
    with pytest.warns(RecipeWarning, match="identical"):
        cb, _ = run(tmp_path, x[:1].expand_as(x).clone(), y)  # planted bug: __getitem__ ignores its index
    assert status(cb) == "fail"


def test_labels_all_one_value_warn(tmp_path: Path) -> None:
    x, _ = images()
    with pytest.warns(RecipeWarning, match="all 16 targets of the batch are 2"):
        cb, _ = run(tmp_path, x, torch.full((64,), 2))  # planted bug: one class only
    assert status(cb) == "warn"


def test_channels_last_batch_warns_unless_declared(tmp_path: Path) -> None:
    x, y = images(shape=(3, 16, 16))
    nhwc = torch.sigmoid(x).permute(0, 2, 3, 1).contiguous()  # planted bug: (N, H, W, C) into an NCHW model
    with pytest.warns(RecipeWarning, match="channels-last"):
        cb, ea = run(tmp_path / "auto", nhwc, y)
    assert status(cb) == "warn" and "image_format='NHWC'" in cb.findings[0].advice
    assert picture(ea).ndim == 3  # still shown, permuted to (N, C, H, W)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RecipeWarning)
        declared, _ = run(tmp_path / "declared", nhwc, y, image_format="NHWC")
    assert status(declared) == "pass"


def test_other_channel_counts_become_per_channel_grids(tmp_path: Path) -> None:
    x, y = images(shape=(5, 8, 8))
    cb, ea = run(tmp_path, x, y, max_images=10)
    assert status(cb) == "pass"
    grid = picture(ea)
    # 10 tiles: 2 samples x 5 channels, 5 columns of 48 px cells (plus padding).
    assert grid.shape[1] == 5 * (48 + 2) + 2 and grid.shape[0] == 2 * (48 + 12 + 2) + 2
    assert len(channel_row(ea, 4)) == 6


def test_dead_image_channel_warns(tmp_path: Path) -> None:
    x, y = images(shape=(3, 8, 8))
    x[:, 1] = 0.0  # planted bug: a colour conversion that drops the green channel
    with pytest.warns(RecipeWarning, match=r"channel\(s\) \[1\]"):
        cb, _ = run(tmp_path, x, y)
    assert status(cb) == "warn"


def test_unresolvable_batch_skips_and_names_the_argument(tmp_path: Path) -> None:
    class PixelsModel(FlatClassifier):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return nn.functional.cross_entropy(self(batch["pixels"]), batch["cls"])

    x, y = images()
    data = [{"pixels": a, "cls": b} for a, b in zip(x, y, strict=True)]
    cb = InputVisualizer()
    fast_trainer(tmp_path, callbacks=[cb], max_steps=1).fit(PixelsModel(), DataLoader(data, batch_size=16))  # type: ignore[arg-type]
    assert status(cb) == "skip" and "input_key" in cb.findings[0].advice
    explicit = InputVisualizer(input_key="pixels", target_key="cls")
    fast_trainer(tmp_path / "b", callbacks=[explicit], max_steps=1).fit(
        PixelsModel(), DataLoader(data, batch_size=16)  # type: ignore[arg-type]
    )
    assert status(explicit) == "pass"


# ----------------------------------------------------------------- cadence and no observer effect
def test_every_n_steps_logs_only_those_steps(tmp_path: Path) -> None:
    x, y = images()
    cb, ea = run(tmp_path, x, y, steps=7, every_n_steps=3)
    assert [e.step for e in ea.Scalars(f"{TAG}/mean")] == [0, 3, 6]
    assert len(ea.Images(f"{TAG}/images")) == 3
    once, eb = run(tmp_path / "once", x, y, steps=4)
    assert f"{TAG}/mean" not in eb.Tags()["scalars"]  # one look: no single-point chart
    assert [e.step for e in eb.Tensors(f"{TAG}/summary/text_summary")] == [0]
    assert [f.status for f in cb.findings] == ["pass"] and [f.status for f in once.findings] == ["pass"]


def test_no_observer_effect(tmp_path: Path) -> None:
    x, y = images()

    def final_weights(callbacks: list[Any]) -> list[torch.Tensor]:
        pl.seed_everything(0, verbose=False)
        model = FlatClassifier(dropout=0.5)
        trainer = fast_trainer(tmp_path, callbacks=callbacks, max_epochs=2, logger=False)
        trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True))
        return [p.detach().clone() for p in model.parameters()]

    bare = final_weights([])
    watched = final_weights([InputVisualizer(every_n_steps=1)])
    assert all(torch.equal(a, b) for a, b in zip(bare, watched, strict=True))


# ----------------------------------------------------------------- DDP
def test_flags_agree_across_ddp_ranks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # the seed of Lightning's DistributedSampler
    x, y = images(n=32)
    # Lightning gives each rank a shuffled DistributedSampler (seed 0): plant a NaN in rank 1's first batch only.
    rank1 = list(DistributedSampler(TensorDataset(x, y), num_replicas=2, rank=1, shuffle=True, seed=0))[:8]
    x[rank1[0], 0, 0, 0] = float("nan")
    cb = InputVisualizer(on_fail="ignore")
    trainer = fast_trainer(tmp_path, callbacks=[cb], max_steps=1, devices=2, strategy="ddp_spawn")
    trainer.fit(FlatClassifier(), DataLoader(TensorDataset(x, y), batch_size=8))
    ea = read_events(tmp_path / "run")
    assert finding_values(ea, TAG)["nan_count"] == 0.0  # rank 0's own batch is clean...
    assert "non finite (seen on another rank)" in text_values(ea, f"{TAG}/summary")[0]  # ...rank 1's is not


# ----------------------------------------------------------------- arguments
@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"every_n_steps": 0}, ValueError, "every_n_steps"),
        ({"max_images": 0}, ValueError, "max_images"),
        ({"max_images": 2.5}, TypeError, "max_images"),
        ({"image_format": "HWC"}, ValueError, "image_format"),
        ({"channel_dim": 0}, ValueError, "channel_dim"),
        ({"channel_dim": "1"}, TypeError, "channel_dim"),
        ({"max_rms": -1.0}, ValueError, "max_rms"),
        ({"on_fail": "explode"}, ValueError, "on_fail"),
        ({"input_key": ""}, TypeError, "input_key"),
    ],
)
def test_argument_errors_name_the_argument(kwargs: dict[str, Any], error: type[Exception], name: str) -> None:
    with pytest.raises(error, match=rf"InputVisualizer\({name}="):
        InputVisualizer(**kwargs)


def test_without_a_logger_pictures_and_text_land_in_files(tmp_path: Path) -> None:
    x, y = images()
    cb = InputVisualizer()
    trainer = fast_trainer(tmp_path, callbacks=[cb], max_steps=1, logger=False)
    trainer.fit(FlatClassifier(), DataLoader(TensorDataset(x, y), batch_size=16))
    folder = tmp_path / "recipe" / "input_visualizer"
    assert (folder / "images" / "step_0000000.png").is_file()
    assert "(16, 1, 8, 8)" in (folder / "summary" / "step_0000000.md").read_text()
    assert status(cb) == "pass"


def test_the_first_look_states_its_measured_cost(tmp_path: Path) -> None:
    """The statistics and pictures of the first look are timed and stated in step equivalents."""
    x = torch.randn(160, 8)
    data = DataLoader(TensorDataset(x, torch.arange(160) % 4), batch_size=8)
    check = InputVisualizer()
    trainer = fast_trainer(tmp_path, max_steps=20, callbacks=[check])
    trainer.fit(TinyClassifier(), data)
    (finding,) = check.findings
    step = check._step_clock.median()
    assert step is not None and step > 0 and finding.values["cost_seconds"] > 0
    assert finding.values["cost_steps"] == pytest.approx(finding.values["cost_seconds"] / step)
