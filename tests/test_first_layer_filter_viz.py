"""FirstLayerFilterViz on real Trainers: the exact filter grid, the noise verdict, the skips."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import TensorDataset

from recipe_callbacks import RecipeWarning
from recipe_callbacks.core.filter_noise import noise_score_chart
from recipe_callbacks.core.pictures import FIGURE_SHAPE
from recipe_callbacks.first_layer_filter_viz import FirstLayerFilterViz
from recipe_callbacks.prediction_dynamics_logger import PredictionDynamicsLogger
from tests.core.test_filter_noise import gabor_bank
from tests.support import TinyClassifier, blobs, fast_trainer, finding_values, loader, read_events, scalar_values

TAG = "recipe.first_layer_filter_viz"


class ConvNet(pl.LightningModule):
    """``head`` is registered before ``conv``, but ``conv`` runs first; dict or tuple batches."""

    def __init__(self, in_channels: int = 3, filters: int = 4, kernel: int = 5, lr: float = 0.05,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.lr = lr
        self.head = nn.Linear(filters, 3)
        self.drop = nn.Dropout(dropout)
        self.conv = nn.Conv2d(in_channels, filters, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.relu(self.conv(x)).mean(dim=(2, 3))))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = (batch["image"], batch["label"]) if isinstance(batch, dict) else batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def images(n: int = 32, channels: int = 3, size: int = 12) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.rand(n, channels, size, size, generator=g), torch.arange(n) % 3)


def png(ea: Any, tag: str, index: int = 0) -> tuple[int, np.ndarray]:
    event = ea.Images(tag)[index]
    return event.step, np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))


def expected_tile(kernel: torch.Tensor, factor: int) -> np.ndarray:
    """Oracle: one filter ``(C, H, W)`` scaled to its own min..max, 0..255, enlarged by ``factor``."""
    k = kernel.double()
    scaled = ((k - k.min()) / (k.max() - k.min()) * 255).round().to(torch.uint8).numpy()  # (C, H, W)
    if scaled.shape[0] == 1:
        scaled = np.repeat(scaled, 3, axis=0)
    return scaled.transpose(1, 2, 0).repeat(factor, axis=0).repeat(factor, axis=1)


def test_grid_of_a_known_colour_conv_is_reproduced_exactly(tmp_path: Path) -> None:
    model = ConvNet(in_channels=3, filters=4, kernel=5)
    with torch.no_grad():
        model.conv.weight.copy_(torch.linspace(-1, 1, 4 * 3 * 25).reshape(4, 3, 5, 5) ** 3)
    known = model.conv.weight.detach().clone()
    cb = FirstLayerFilterViz()
    trainer = fast_trainer(tmp_path, max_epochs=1, callbacks=[cb])
    trainer.fit(model, loader(images(), batch_size=8))
    assert cb.layer_name == "conv"  # forward order, not registration order ("head" comes first)
    step, grid = png(read_events(tmp_path / "run"), f"{TAG}/filters", 0)
    assert step == 0  # drawn before the first optimizer step: the known weights
    # 4 colour filters in 2 columns; 5x5 kernels enlarged 10x to at least 48 px; 2 px white padding.
    assert grid.shape == (2 + 2 * 52, 2 + 2 * 52, 3)
    for i in range(4):
        r, c = divmod(i, 2)
        top, left = 2 + r * 52, 2 + c * 52
        np.testing.assert_array_equal(grid[top : top + 50, left : left + 50], expected_tile(known[i], 10))
    assert (grid[:2] == 255).all() and (grid[:, 52:54] == 255).all()


def test_grid_of_a_grey_conv_shows_one_tile_per_channel(tmp_path: Path) -> None:
    model = ConvNet(in_channels=2, filters=3, kernel=6)
    known = model.conv.weight.detach().clone()
    cb = FirstLayerFilterViz()
    fast_trainer(tmp_path, max_epochs=1, callbacks=[cb]).fit(model, loader(images(channels=2), batch_size=8))
    _, grid = png(read_events(tmp_path / "run"), f"{TAG}/filters", 0)
    assert grid.shape == (2 + 3 * 50, 2 + 2 * 50, 3)  # one filter per row, its 2 channels side by side
    for o in range(3):
        for ch in range(2):
            top, left = 2 + o * 50, 2 + ch * 50
            tile = grid[top : top + 48, left : left + 48]
            np.testing.assert_array_equal(tile, expected_tile(known[o, ch : ch + 1], 8))


class VolumeOrSignalNet(pl.LightningModule):
    """A Conv1d over (N, 2, 32) signals or a Conv3d over (N, 1, 4, 10, 10) volumes, then a head."""

    def __init__(self, dims: int) -> None:
        super().__init__()
        self.conv: nn.Module = nn.Conv1d(2, 4, 9) if dims == 1 else nn.Conv3d(1, 4, (2, 5, 5))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).flatten(2).mean(dim=2))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize(("dims", "shape"), [(1, (2, 32)), (3, (1, 4, 10, 10))])
def test_conv1d_strips_and_conv3d_slices(tmp_path: Path, dims: int, shape: tuple[int, ...]) -> None:
    data = TensorDataset(torch.randn(16, *shape), torch.arange(16) % 3)
    model = VolumeOrSignalNet(dims)
    bank = model.conv.weight.detach().clone()  # type: ignore[operator]
    cb = FirstLayerFilterViz(on_fail="ignore")
    fast_trainer(tmp_path, max_epochs=1, callbacks=[cb]).fit(model, loader(data, batch_size=8))
    assert cb.layer_name == "conv"
    assert 0.6 < cb.findings[-1].values["initial_noise_score"] < 1.4  # random init
    _, grid = png(read_events(tmp_path / "run"), f"{TAG}/filters", 0)
    if dims == 1:  # 4 filters x 2 channels, each a 1 x 9 strip enlarged 6x: one filter per row
        assert grid.shape == (2 + 4 * (6 + 2), 2 + 2 * (54 + 2), 3)
        expected = expected_tile(bank[1, 1].reshape(1, 1, 9), 6)
        np.testing.assert_array_equal(grid[2 + 8 : 2 + 8 + 6, 2 + 56 : 2 + 56 + 54], expected)
    else:  # 4 filters, the 2 depth slices of 5x5 side by side (5 x 10), enlarged 5x, 2 columns
        assert grid.shape == (2 + 2 * (25 + 2), 2 + 2 * (50 + 2), 3)
        side_by_side = torch.cat([bank[3, 0, 0], bank[3, 0, 1]], dim=1).unsqueeze(0)  # (1, 5, 10)
        np.testing.assert_array_equal(grid[29 : 29 + 25, 54 : 54 + 50], expected_tile(side_by_side, 5))


def fit_filters(root: Path, bank: torch.Tensor | None, freeze: bool, epochs: int = 3, **kw: Any) -> FirstLayerFilterViz:
    pl.seed_everything(0, verbose=False)
    model = ConvNet(in_channels=1, filters=8, kernel=7)
    if bank is not None:
        with torch.no_grad():
            model.conv.weight.copy_(bank.float() * 0.1)
    model.conv.weight.requires_grad_(not freeze)
    cb = FirstLayerFilterViz(**kw)
    fast_trainer(root, max_epochs=epochs, callbacks=[cb]).fit(model, loader(images(channels=1, size=16), batch_size=8))
    return cb


def test_noise_like_filters_are_flagged_and_smooth_ones_pass(tmp_path: Path) -> None:
    # Planted: the first layer is frozen at its random init, so it never learns structure.
    with pytest.warns(RecipeWarning, match="noise"):
        frozen = fit_filters(tmp_path / "frozen", None, freeze=True)
    noisy = frozen.findings[-1]
    assert noisy.status == "warn" and "learning rate" in noisy.advice
    assert 0.8 < noisy.values["final_noise_score"] < 1.2
    # Healthy: Gabor-like (smooth, edge-like) filters.
    smooth = fit_filters(tmp_path / "smooth", gabor_bank(8, 7), freeze=False).findings[-1]
    assert smooth.status == "pass", smooth.message()
    assert smooth.values["final_noise_score"] < 0.5 < noisy.values["final_noise_score"]
    # The score is a scalar over time: at the start, at each of the 3 epoch ends (the last one is
    # also the end of training), and the Finding's final value.
    ea = read_events(tmp_path / "frozen" / "run")
    scores = scalar_values(ea, f"{TAG}/noise_score")
    assert len(scores) == 4 and scores[0] == pytest.approx(scores[-1])  # frozen: unchanged
    assert finding_values(ea, TAG)["final_noise_score"] == pytest.approx(scores[-1], rel=1e-3)
    assert [e.step for e in ea.Images(f"{TAG}/filters")] == [0, 4, 8, 12]
    assert [e.step for e in ea.Images(f"{TAG}/noise_score_chart")] == [0, 4, 8, 12]
    # the last chart drawn: every score against the threshold band
    chart = noise_score_chart(frozen._scores, frozen.layer_name or "", frozen.noise_threshold)
    assert list(chart.axes[0].lines[0].get_ydata()) == pytest.approx(scores[:4])
    assert "structured filters" in chart.axes[0].get_legend_handles_labels()[1]


class ResNetStem(pl.LightningModule):
    """A ResNet-style stem (7x7 conv, stride 2, BatchNorm, ReLU, max-pool) and a small body, Adam."""

    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__()
        self.lr = lr
        self.stem = nn.Sequential(
            nn.Conv2d(1, 16, 7, 2, 3, bias=False), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
        self.body = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.stem(x)).mean(dim=(2, 3)))  # (N, 1, 16, 16) -> (N, 10)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def digits16() -> TensorDataset:
    """scikit-learn's real 8x8 digits, upsampled to 16x16 and standardised."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = nn.functional.interpolate(x, size=16, mode="bilinear")
    return TensorDataset((x - x.mean()) / x.std(), torch.tensor(data.target))


def test_a_short_healthy_run_is_not_judged_as_noise(tmp_path: Path) -> None:
    # A healthy ResNet-style stem after 100 Adam steps on real digits: the filters still score as
    # noise (the init dominates), which used to be a WARN; the learned change is smooth.
    pl.seed_everything(0, verbose=False)
    cb = FirstLayerFilterViz()
    trainer = fast_trainer(tmp_path / "short", max_steps=100, max_epochs=-1, callbacks=[cb])
    trainer.fit(ResNetStem(), loader(digits16(), batch_size=32, shuffle=True))
    finding = cb.findings[-1]
    assert finding.values["final_noise_score"] > cb.noise_threshold  # what the old verdict saw
    assert finding.status == "skip", finding.message()
    assert "too little training" in finding.summary and "min_weight_change" in finding.advice
    assert finding.values["weight_change"] < 1.0 and finding.values["optimizer_steps"] == 100
    assert finding.values["change_noise_score"] < 0.6  # what training added is smooth
    # fast_dev_run: one step, no judgement either.
    cb = FirstLayerFilterViz()
    fast_trainer(tmp_path / "dev", fast_dev_run=True, callbacks=[cb]).fit(ResNetStem(), loader(digits16()))
    assert cb.findings[-1].status == "skip" and "1 optimizer step" in cb.findings[-1].summary


class AdamConvNet(ConvNet):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def test_noise_learned_over_a_long_move_is_flagged(tmp_path: Path) -> None:
    # Planted: the inputs are zero-mean i.i.d. noise and Adam's learning rate is far too high, so the
    # first layer moves many times its init's norm but all it adds is noise.
    pl.seed_everything(0, verbose=False)
    g = torch.Generator().manual_seed(0)
    noise = TensorDataset(torch.randn(32, 1, 16, 16, generator=g), torch.arange(32) % 3)
    cb = FirstLayerFilterViz()
    with pytest.warns(RecipeWarning, match="noise-like"):
        fast_trainer(tmp_path, max_epochs=10, callbacks=[cb]).fit(
            AdamConvNet(in_channels=1, filters=8, kernel=7, lr=0.05), loader(noise, batch_size=8)
        )
    finding = cb.findings[-1]
    assert finding.status == "warn" and finding.values["weight_change"] > 1.0, finding.message()
    assert finding.values["change_noise_score"] > cb.noise_threshold and "learning rate" in finding.advice


def test_small_kernels_are_drawn_but_not_judged(tmp_path: Path) -> None:
    model = ConvNet(in_channels=1, filters=4, kernel=3)
    cb = FirstLayerFilterViz(every_n_epochs=2)
    trainer = fast_trainer(tmp_path, max_epochs=1, callbacks=[cb])
    trainer.fit(model, loader(images(channels=1), batch_size=8))
    finding = cb.findings[-1]
    assert finding.status == "skip" and "min_kernel_size" in finding.advice
    assert math.isfinite(finding.values["final_noise_score"])
    assert len(read_events(tmp_path / "run").Images(f"{TAG}/filters")) == 2  # start and end


class FlatMLP(pl.LightningModule):
    """A Linear first layer over (N, 1, 8, 8) images, flattened inside forward."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(64, 10)
        self.out = nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.first(x.flatten(1))))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_linear_first_layer_over_images_is_reshaped_to_the_image(tmp_path: Path) -> None:
    model = FlatMLP()
    known = model.first.weight.detach().clone()
    cb = FirstLayerFilterViz(on_fail="ignore")
    fast_trainer(tmp_path, max_epochs=1, callbacks=[cb]).fit(model, loader(images(channels=1, size=8), batch_size=8))
    assert cb.layer_name == "first"
    _, grid = png(read_events(tmp_path / "run"), f"{TAG}/filters", 0)
    assert grid.shape == (2 + 3 * 50, 2 + 4 * 50, 3)  # 10 units as 8x8 tiles (x6), 4 columns
    np.testing.assert_array_equal(grid[52:100, 2:50], expected_tile(known[4].reshape(1, 8, 8), 6))
    assert 0.7 < cb.findings[-1].values["initial_noise_score"] < 1.3


def test_linear_over_flat_features_needs_image_shape(tmp_path: Path) -> None:
    cb = FirstLayerFilterViz()
    model = TinyClassifier()
    fast_trainer(tmp_path, max_epochs=1, callbacks=[cb]).fit(model, loader(blobs(32)))
    finding = cb.findings[-1]
    assert finding.status == "skip" and "image_shape" in finding.advice
    _, picture = png(read_events(tmp_path / "run"), f"{TAG}/filters", 0)
    assert picture.shape == FIGURE_SHAPE  # the (16, 8) weight matrix as a figure with a colour bar
    figure = cb.picture()
    assert not isinstance(figure, np.ndarray)
    (image,) = figure.axes[0].get_images()
    np.testing.assert_array_equal(image.get_array(), model.net[0].weight.detach().double().numpy())
    assert figure.axes[1].get_ylabel() == "weight"  # the colour bar and its scale
    # Given the layout, the 8 features are judged as a 2x4 image.
    cb = FirstLayerFilterViz(image_shape=[2, 4], min_kernel_size=8, on_fail="ignore")
    fast_trainer(tmp_path / "shaped", max_epochs=1, callbacks=[cb]).fit(TinyClassifier(), loader(blobs(32)))
    shaped = cb.findings[-1]  # judged by its layout now (one short epoch: too little training to expect structure)
    assert "image_shape" not in shaped.advice and math.isfinite(shaped.values["final_noise_score"])
    assert cb.filter_bank() is not None and cb.filter_bank().shape == (16, 1, 2, 4)  # type: ignore[union-attr]


class EmbeddingModel(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(tokens).mean(dim=1))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self(batch["input_ids"]), batch["label"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class TokenData(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __len__(self) -> int:
        return 16

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": torch.arange(5) + i % 10, "label": torch.tensor(i % 2)}


def test_embedding_first_skips_naming_layer(tmp_path: Path) -> None:
    cb = FirstLayerFilterViz()
    trainer = fast_trainer(tmp_path, max_epochs=1, callbacks=[cb])
    trainer.fit(EmbeddingModel(), loader(TokenData(), batch_size=4))
    finding = cb.findings[-1]
    assert finding.status == "skip"
    assert "'embed'" in finding.summary and "Embedding" in finding.summary
    assert "layer=" in finding.advice
    assert f"{TAG}/filters" not in read_events(tmp_path / "run").Tags()["images"]
    # Naming a layer draws it anyway.
    tokens = loader(TokenData(), batch_size=4)
    cb = FirstLayerFilterViz(layer="head", on_fail="ignore")
    fast_trainer(tmp_path / "named", max_epochs=1, callbacks=[cb]).fit(EmbeddingModel(), tokens)
    assert cb.layer_name == "head" and cb.findings[-1].status == "skip" and "image_shape" in cb.findings[-1].advice
    # A name that is not there skips naming the argument and listing the layers.
    cb = FirstLayerFilterViz(layer="nope")
    fast_trainer(tmp_path / "bad", max_epochs=1, callbacks=[cb]).fit(EmbeddingModel(), tokens)
    finding = cb.findings[-1]
    assert finding.status == "skip" and "'head'" in finding.summary and "layer=" in finding.advice


def seeded_run(root: Path, callbacks: list[Any]) -> dict[str, torch.Tensor]:
    pl.seed_everything(123, verbose=False)
    model = ConvNet(in_channels=3, filters=4, kernel=5, dropout=0.3)
    trainer = fast_trainer(root, max_epochs=2, callbacks=callbacks, deterministic=True)
    trainer.fit(model, loader(images(32), batch_size=8, shuffle=True), loader(images(16)))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_monitors_leave_a_seeded_run_bit_identical(tmp_path: Path) -> None:
    bare = seeded_run(tmp_path / "bare", [])
    watched = seeded_run(
        tmp_path / "watched",
        [
            FirstLayerFilterViz(on_fail="ignore"),
            PredictionDynamicsLogger(num_samples=4, every_n_steps=1, on_fail="ignore"),
        ],
    )
    assert bare.keys() == watched.keys()
    for name in bare:
        assert torch.equal(bare[name], watched[name]), name
    assert len(read_events(tmp_path / "watched" / "run").Images(f"{TAG}/filters")) == 3


@pytest.mark.parametrize(
    ("kwargs", "error", "argument"),
    [
        ({"every_n_epochs": 0}, ValueError, "every_n_epochs"),
        ({"layer": ""}, TypeError, "layer"),
        ({"image_shape": [28]}, TypeError, "image_shape"),
        ({"image_shape": [1, 0, 28]}, ValueError, "image_shape"),
        ({"noise_threshold": 0.0}, ValueError, "noise_threshold"),
        ({"min_kernel_size": 1}, ValueError, "min_kernel_size"),
        ({"max_filters": 0}, ValueError, "max_filters"),
        ({"min_weight_change": 0.0}, ValueError, "min_weight_change"),
        ({"on_fail": "loud"}, ValueError, "on_fail"),
    ],
)
def test_argument_errors_name_the_argument(kwargs: dict[str, Any], error: type[Exception], argument: str) -> None:
    with pytest.raises(error, match=rf"FirstLayerFilterViz\({argument}="):
        FirstLayerFilterViz(**kwargs)
