"""Input statistics against a per-channel loop in plain torch (the oracle), layouts, and the red flags."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from recipe_callbacks.core.input_stats import (
    FLAG_NAMES,
    FLAG_STATUS,
    channel_stats,
    display_tiles,
    guess_layout,
    input_flags,
    is_class_index,
    to_nchw,
)


def oracle(x: torch.Tensor, dim: int) -> list[tuple[float, float, float, float, int, int]]:
    out = []
    for c in range(x.shape[dim]):
        v = x.select(dim, c).reshape(-1).double()
        f = v[torch.isfinite(v)]
        std = float(np.std(f.numpy())) if f.numel() else math.nan
        mean = float(f.mean()) if f.numel() else math.nan
        lo = float(f.min()) if f.numel() else math.nan
        hi = float(f.max()) if f.numel() else math.nan
        out.append((mean, std, lo, hi, int(torch.isnan(v).sum()), int(torch.isinf(v).sum())))
    return out


@pytest.mark.parametrize(("shape", "dim"), [((6, 3, 4, 5), 1), ((10, 7), 1), ((4, 5, 6), -1), ((2, 3, 4, 2), 3)])
def test_channel_stats_match_a_per_channel_loop(shape: tuple[int, ...], dim: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g) * 3 + 1
    x.view(-1)[::7] = float("nan")
    x.view(-1)[3::11] = float("inf")  # with shape (10, 7) channel 0 has no finite value at all
    s = channel_stats(x, dim)
    for c, (mean, std, lo, hi, nan, inf) in enumerate(oracle(x, dim)):
        assert float(s.mean[c]) == pytest.approx(mean, rel=1e-9, abs=1e-12, nan_ok=True)
        assert float(s.std[c]) == pytest.approx(std, rel=1e-9, abs=1e-12, nan_ok=True)
        assert float(s.min[c]) == pytest.approx(lo, nan_ok=True) and float(s.max[c]) == pytest.approx(hi, nan_ok=True)
        assert (int(s.nan[c]), int(s.inf[c])) == (nan, inf)


def test_overall_pools_the_channels_exactly() -> None:
    x = torch.randn(8, 3, 5, 5, generator=torch.Generator().manual_seed(1))
    x[0, 1, 0, 0] = float("nan")
    overall = channel_stats(x, 1).overall()
    finite = x[torch.isfinite(x)].double()
    assert overall["mean"] == pytest.approx(float(finite.mean()), rel=1e-12)
    assert overall["std"] == pytest.approx(float(finite.std(unbiased=False)), rel=1e-12)
    assert (overall["min"], overall["max"], overall["nan"], overall["inf"]) == (
        float(finite.min()),
        float(finite.max()),
        1.0,
        0.0,
    )


def test_channels_without_finite_values_are_nan() -> None:
    s = channel_stats(torch.tensor([[float("nan"), 1.0], [float("nan"), 3.0]]), 1)
    assert math.isnan(float(s.mean[0])) and float(s.mean[1]) == 2.0
    assert s.overall()["mean"] == 2.0
    assert math.isnan(channel_stats(torch.full((3,), float("nan")), None).overall()["mean"])


def test_one_channel_and_integer_inputs() -> None:
    s = channel_stats(torch.tensor([1, 2, 3, 4], dtype=torch.uint8), None)
    assert s.channels == 1 and float(s.mean[0]) == 2.5 and float(s.rms[0]) == pytest.approx(math.sqrt(7.5))


@pytest.mark.parametrize(
    ("shape", "fmt", "layout"),
    [
        ((8, 3, 32, 32), "auto", "NCHW"),
        ((8, 1, 28, 28), "auto", "NCHW"),
        ((8, 28, 28, 1), "auto", "NHWC"),
        ((8, 32, 32, 3), "auto", "NHWC"),
        ((8, 5, 16, 16), "auto", "NCHW"),
        ((8, 64, 4, 4), "auto", "NCHW"),  # a feature map: the last dim is not a channel dim
        ((8, 28, 28), "auto", "none"),
        ((8, 10), "NCHW", "none"),
        ((8, 32, 32, 3), "NCHW", "NCHW"),
        ((8, 3, 32, 32), "NHWC", "NHWC"),
        ((8, 3, 32, 32), "none", "none"),
    ],
)
def test_guess_layout(shape: tuple[int, ...], fmt: str, layout: str) -> None:
    assert guess_layout(shape, fmt) == layout  # type: ignore[arg-type]


def names(x: torch.Tensor, y: torch.Tensor | None = None, **kw: object) -> list[str]:
    layout = kw.pop("layout", guess_layout(tuple(x.shape)))
    nchw = to_nchw(x, layout) if layout != "none" else x  # type: ignore[arg-type]
    stats = channel_stats(nchw, 1 if x.ndim >= 2 else None)
    return [f.name for f in input_flags(x, stats, y, layout=layout, **kw)]  # type: ignore[arg-type]


def test_healthy_inputs_raise_no_flag() -> None:
    g = torch.Generator().manual_seed(0)
    assert names(torch.randn(16, 3, 8, 8, generator=g), torch.arange(16) % 4) == []
    assert names(torch.rand(16, 1, 8, 8, generator=g), torch.arange(16) % 2) == []
    assert names(torch.randn(16, 10, generator=g), torch.randn(16, generator=g)) == []
    assert names(torch.randint(0, 1000, (16, 12), generator=g)) == []  # token ids: no scale check


def test_each_planted_bug_raises_its_flag() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, 3, 8, 8, generator=g)
    nan = x.clone()
    nan[0, 0, 0, 0] = float("nan")
    assert names(nan) == ["non_finite"]
    assert names(torch.zeros(16, 3, 8, 8)) == ["constant"]
    assert names(x[:1].expand(16, 3, 8, 8)) == ["identical_samples"]
    assert names(torch.rand(16, 3, 8, 8, generator=g) * 255) == ["unnormalised"]
    assert names((torch.rand(16, 3, 8, 8, generator=g) * 255).to(torch.uint8)) == ["integer_pixels"]
    dead = x.clone()
    dead[:, 2] = 0.5
    assert names(dead) == ["dead_channel"]
    assert names(x.permute(0, 2, 3, 1)) == ["channels_last"]
    assert names(x.permute(0, 2, 3, 1), guessed=False) == []
    assert names(x, torch.full((16,), 3)) == ["one_target_value"]
    assert names(x, torch.full((4,), 3)) == []  # too few targets to judge
    assert names(x, torch.tensor([0.0, float("nan")] * 8)) == ["non_finite_targets"]
    assert names(torch.randn(16, 10, generator=g) * 100) == ["unnormalised"]
    assert names(torch.randn(16, 10, generator=g) * 4, max_rms=2.0) == ["unnormalised"]


def test_flag_tables_agree() -> None:
    assert set(FLAG_NAMES) == set(FLAG_STATUS)


def test_class_indices() -> None:
    assert is_class_index(torch.tensor([0, 1, 2]), 3)
    assert is_class_index(torch.tensor([0.0, 1.0]), 2)
    assert not is_class_index(torch.tensor([0.0, 1.5]), 2)
    assert not is_class_index(torch.tensor([0, 1]), 3)
    assert not is_class_index(torch.zeros(3, 2), 3)
    assert not is_class_index(None, 3)


def test_display_tiles_are_bounded() -> None:
    tiles, shown, cols = display_tiles(torch.zeros(100, 3, 4, 4), 32)
    assert tuple(tiles.shape) == (32, 3, 4, 4) and (shown, cols) == (32, 0)
    tiles, shown, cols = display_tiles(torch.zeros(100, 64, 4, 4), 32)
    assert tuple(tiles.shape) == (32, 1, 4, 4) and (shown, cols) == (1, 32)
    x = torch.arange(2 * 4 * 1 * 1.0).reshape(2, 4, 1, 1)
    tiles, _, _ = display_tiles(x, 8)
    assert tiles.reshape(-1).tolist() == x.reshape(-1).tolist()  # row per sample, channel by channel
