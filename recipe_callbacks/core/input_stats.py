"""What a batch looks like just before the net: per-channel statistics, image layout, and red flags.

``channel_stats`` summarises each channel (mean, std, min, max over the finite values, and the
NaN and Inf counts); ``guess_layout`` decides whether a tensor is a batch of images and in which
layout; ``input_flags`` turns both (and the targets) into the red flags of recipe step 2j: NaN or
Inf, values that look unnormalised (e.g. raw 0..255 pixels), a constant input, identical samples,
a dead image channel, channels-last images, and targets that are all one value.

Nothing here imports Lightning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

ImageFormat = Literal["auto", "NCHW", "NHWC", "none"]
Layout = Literal["NCHW", "NHWC", "none"]
# A batch needs this many targets before "all one value" means something (1 in 2**7 by chance
# for a balanced binary task).
MIN_TARGETS_FOR_ONE_VALUE = 8
# Raw 8-bit pixels: the largest value of a 0..255 image.
PIXEL_MAX = 255.0


@dataclass(frozen=True)
class ChannelStats:
    """Statistics of each channel over its finite values; every field has shape ``(C,)``.

    ``std`` is the population standard deviation. A channel without a finite value has NaN
    ``mean``/``std``/``min``/``max``.
    """

    mean: torch.Tensor
    std: torch.Tensor
    min: torch.Tensor
    max: torch.Tensor
    finite: torch.Tensor
    nan: torch.Tensor
    inf: torch.Tensor

    @property
    def channels(self) -> int:
        return int(self.mean.shape[0])

    @property
    def rms(self) -> torch.Tensor:
        """Root mean square of each channel, ``sqrt(mean**2 + std**2)``: about 1 when normalised."""
        return torch.sqrt(self.mean**2 + self.std**2)

    def overall(self) -> dict[str, float]:
        """Mean, std, min, max over every finite value, and the total NaN / Inf counts.

        The overall variance pools the channels: ``sum n_c (var_c + (mean_c - mean)**2) / sum n_c``.
        """
        n = self.finite.to(torch.float64)
        total = float(n.sum())
        nan, inf = float(self.nan.sum()), float(self.inf.sum())
        if total == 0:
            return {"mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan, "nan": nan, "inf": inf}
        have = self.finite > 0
        mean = float((n[have] * self.mean[have]).sum() / total)
        var = float((n[have] * (self.std[have] ** 2 + (self.mean[have] - mean) ** 2)).sum() / total)
        return {
            "mean": mean,
            "std": math.sqrt(max(var, 0.0)),
            "min": float(self.min[have].min()),
            "max": float(self.max[have].max()),
            "nan": nan,
            "inf": inf,
        }


def channel_stats(x: torch.Tensor, channel_dim: int | None = 1) -> ChannelStats:
    """Per-channel statistics of ``x`` over every dim but ``channel_dim`` (``None``: one channel).

    Computed in float64 on the tensor's own device; the results are on the CPU.

    Example:
        >>> s = channel_stats(torch.tensor([[0.0, 10.0], [2.0, float("nan")]]), channel_dim=1)
        >>> s.mean.tolist(), s.std.tolist(), s.nan.tolist()
        ([1.0, 10.0], [1.0, 0.0], [0, 1])
    """
    data = x.detach()
    if data.ndim == 0 or channel_dim is None:
        data = data.reshape(1, -1)
    else:
        data = data.movedim(channel_dim, 0).reshape(data.shape[channel_dim], -1)
    # (C, M) in float64
    data = data.to(torch.float64)
    finite = torch.isfinite(data)
    count = finite.sum(dim=1)
    safe = count.clamp_min(1).to(torch.float64)
    zeroed = torch.where(finite, data, torch.zeros((), dtype=data.dtype, device=data.device))
    mean = zeroed.sum(dim=1) / safe
    centred = torch.where(finite, data - mean[:, None], torch.zeros((), dtype=data.dtype, device=data.device))
    std = torch.sqrt((centred**2).sum(dim=1) / safe)
    big = torch.tensor(math.inf, dtype=data.dtype, device=data.device)
    low = torch.where(finite, data, big).amin(dim=1)
    high = torch.where(finite, data, -big).amax(dim=1)
    none = count == 0
    nan = torch.tensor(math.nan, dtype=data.dtype, device=data.device)
    return ChannelStats(
        mean=torch.where(none, nan, mean).cpu(),
        std=torch.where(none, nan, std).cpu(),
        min=torch.where(none, nan, low).cpu(),
        max=torch.where(none, nan, high).cpu(),
        finite=count.cpu(),
        nan=torch.isnan(data).sum(dim=1).cpu(),
        inf=torch.isinf(data).sum(dim=1).cpu(),
    )


def guess_layout(shape: tuple[int, ...] | torch.Size, image_format: ImageFormat = "auto") -> Layout:
    """Whether a tensor of ``shape`` is a batch of images, and whether channels come first or last.

    With ``"auto"`` only 4-D tensors are images: ``(N, C, H, W)`` when ``C`` is 1 or 3; channels
    last ``(N, H, W, C)`` when the last dim is 1, 3 or 4 and dims 1 and 2 look spatial (both
    larger than 4); otherwise ``(N, C, H, W)`` with any number of channels. An explicit
    ``image_format`` wins for 4-D tensors.

    Example:
        >>> guess_layout((8, 3, 32, 32)), guess_layout((8, 28, 28, 1)), guess_layout((8, 16))
        ('NCHW', 'NHWC', 'none')
    """
    if len(shape) != 4 or image_format == "none":
        return "none"
    if image_format in ("NCHW", "NHWC"):
        return image_format
    _, c, h, last = shape
    if c in (1, 3):
        return "NCHW"
    if last in (1, 3, 4) and c > 4 and h > 4:
        return "NHWC"
    return "NCHW"


def is_class_index(y: torch.Tensor | None, n: int) -> bool:
    """True when ``y`` holds one integer class index per sample (an int tensor, or integral floats).

    Example:
        >>> is_class_index(torch.tensor([0, 2, 1]), 3), is_class_index(torch.tensor([0.5, 1.0]), 2)
        (True, False)
    """
    if y is None or y.ndim != 1 or y.shape[0] != n or y.numel() == 0:
        return False
    if y.dtype == torch.bool or not (y.is_floating_point() or y.is_complex()):
        return True
    if y.is_complex():
        return False
    finite = torch.isfinite(y)
    return bool(finite.all()) and bool((y == torch.round(y)).all())


@dataclass(frozen=True)
class Flag:
    """One red flag: ``name`` is one of ``FLAG_NAMES``, ``status`` ``"warn"`` or ``"fail"``, and
    ``numbers`` what was seen (the callback writes the words)."""

    name: str
    status: Literal["warn", "fail"]
    numbers: dict[str, Any] = field(default_factory=dict)


# Every flag ``input_flags`` can raise, in a fixed order (ranks sum a 0/1 vector in this order).
FLAG_NAMES: tuple[str, ...] = (
    "non_finite",
    "constant",
    "identical_samples",
    "unnormalised",
    "integer_pixels",
    "dead_channel",
    "channels_last",
    "non_finite_targets",
    "one_target_value",
)
FLAG_STATUS: dict[str, Literal["warn", "fail"]] = {
    "non_finite": "fail",
    "constant": "fail",
    "identical_samples": "fail",
    "unnormalised": "warn",
    "integer_pixels": "warn",
    "dead_channel": "warn",
    "channels_last": "warn",
    "non_finite_targets": "fail",
    "one_target_value": "warn",
}


def _flag(name: str, **numbers: Any) -> Flag:
    return Flag(name, FLAG_STATUS[name], numbers)


def _value_flags(x: torch.Tensor, stats: ChannelStats, overall: dict[str, float]) -> list[Flag]:
    """NaN/Inf, a constant input, identical samples."""
    flags: list[Flag] = []
    if overall["nan"] + overall["inf"]:
        flags.append(_flag("non_finite", nan=int(overall["nan"]), inf=int(overall["inf"]), numel=x.numel()))
    constant = int(stats.finite.sum()) > 1 and overall["min"] == overall["max"]
    if constant:
        flags.append(_flag("constant", value=overall["min"]))
    if not constant and x.ndim >= 1 and x.shape[0] > 1 and x.numel() > 0:
        first = x[:1]
        same = (x == first) | (torch.isnan(x) & torch.isnan(first))
        if bool(same.all()):
            flags.append(_flag("identical_samples", n=x.shape[0]))
    return flags


def _scale_flags(x: torch.Tensor, stats: ChannelStats, overall: dict[str, float], layout: Layout,
                 max_rms: float) -> list[Flag]:
    """Integer pixels, or a floating-point channel whose root mean square exceeds ``max_rms``."""
    finite_total = int(stats.finite.sum())
    pixels = overall["min"] >= 0.0 and 1.0 < overall["max"] <= PIXEL_MAX
    integer = not (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool)
    if integer and layout != "none" and finite_total and pixels:
        # uint8, or int64 pixels as read from a file or a NumPy array: raw 0..255 all the same
        return [_flag("integer_pixels", dtype=str(x.dtype).replace("torch.", ""), low=overall["min"],
                      high=overall["max"])]
    if not (x.is_floating_point() and stats.channels and finite_total):
        return []
    rms = stats.rms
    worst = int(torch.nan_to_num(rms, nan=0.0).argmax())
    if float(rms[worst]) <= max_rms:
        return []
    return [_flag("unnormalised", channel=worst, mean=float(stats.mean[worst]), std=float(stats.std[worst]),
                  rms=float(rms[worst]), max_rms=max_rms, low=overall["min"], high=overall["max"], pixels=pixels)]


def input_flags(
    x: torch.Tensor,
    stats: ChannelStats,
    y: torch.Tensor | None = None,
    *,
    layout: Layout = "none",
    guessed: bool = True,
    max_rms: float = 5.0,
) -> list[Flag]:
    """The red flags of a batch ``x`` (with its ``stats``) and its targets ``y``.

    Args:
        x: the input as the model receives it (used for its dtype, shape and identical samples).
        stats: ``channel_stats`` of ``x`` (image channels when ``layout`` is an image layout).
        y: the targets, or ``None``.
        layout: ``guess_layout`` of ``x``.
        guessed: whether ``layout`` was guessed (only a guessed channels-last layout is flagged).
        max_rms: a floating-point channel whose root mean square exceeds this looks unnormalised.

    Example:
        >>> x = torch.rand(4, 3, 8, 8) * 255
        >>> [f.name for f in input_flags(x, channel_stats(x), layout="NCHW")]
        ['unnormalised']
    """
    overall = stats.overall()
    flags = _value_flags(x, stats, overall) + _scale_flags(x, stats, overall, layout, max_rms)
    constant = any(f.name == "constant" for f in flags)
    if layout != "none" and stats.channels > 1 and not constant:
        dead = [c for c in range(stats.channels) if stats.finite[c] > 1 and stats.min[c] == stats.max[c]]
        if dead:
            flags.append(_flag("dead_channel", channels=dead[:8]))
    if layout == "NHWC" and guessed:
        flags.append(_flag("channels_last", shape=tuple(x.shape), dim1=x.shape[1], last=x.shape[3]))
    if y is not None and y.numel() > 0:
        if (y.is_floating_point() or y.is_complex()) and not bool(torch.isfinite(y).all()):
            flags.append(_flag("non_finite_targets"))
        elif y.numel() >= MIN_TARGETS_FOR_ONE_VALUE and bool((y == y.reshape(-1)[0]).all()):
            flags.append(_flag("one_target_value", n=y.numel(), value=y.reshape(-1)[0].item()))
    return flags


def to_nchw(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """A 4-D image batch in ``(N, C, H, W)`` order (a view; ``x`` itself when already NCHW)."""
    return x.permute(0, 3, 1, 2) if layout == "NHWC" else x


def display_tiles(images: torch.Tensor, max_images: int) -> tuple[torch.Tensor, int, int]:
    """The tiles to draw of an ``(N, C, H, W)`` batch, at most ``max_images`` of them.

    With 1 or 3 channels each sample is one tile. With any other channel count every channel is a
    grey tile, a row per sample: returns ``(tiles (T, 1 or 3, H, W), samples shown, columns)``.

    Example:
        >>> tiles, n, cols = display_tiles(torch.zeros(10, 5, 4, 4), max_images=12)
        >>> tuple(tiles.shape), n, cols
        ((10, 1, 4, 4), 2, 5)
    """
    n, c, h, w = images.shape
    if c in (1, 3):
        shown = min(n, max_images)
        return images[:shown], shown, 0
    per_sample = min(c, max_images)
    shown = max(1, min(n, max_images // per_sample))
    tiles = images[:shown, :per_sample].reshape(shown * per_sample, 1, h, w)
    return tiles, shown, per_sample
