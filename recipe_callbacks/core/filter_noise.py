"""First-layer filters: their layout as pictures and a noise score that tells noise from structure.

Recipe step 4: "look at the first-layer weights: clean edges mean good filters; noise means
something is wrong". A filter bank here is a tensor ``(O, C, *spatial)``: ``O`` filters of ``C``
input channels over 1, 2 or 3 spatial dimensions (a ``Conv1d/2d/3d`` weight, or a ``Linear``
weight over an image reshaped to ``(O, C, H, W)``).

**Noise score** (the von Neumann ratio of the filters): for each filter ``f`` and input channel
``c``, ``D`` is the mean squared difference between spatially neighbouring weights (pairs along
every spatial axis) and ``V`` the (unbiased) variance of the weights of that kernel. The score of
a filter is ``sum_c D / (2 * sum_c V)``; the score of a bank pools every filter the same way,
``sum D / (2 * sum V)``, so filters with more energy count more and dead (all-zero) filters do
not break it.

For i.i.d. random weights (any random initialisation) ``E[D] = 2 sigma^2`` and ``E[V] = sigma^2``,
so the score is about **1**. Smooth filters (blobs, edges, Gabor-like stripes) change little from
a weight to its neighbour and score far lower (7x7 Gabor filters of wavelength 6 px score about 0.35,
5x5 ones about 0.5). Alternating (checkerboard) filters score up to 2. Tiny kernels (3x3) are high-pass by nature
(a Sobel edge filter scores 0.44, a Laplacian 1.8), so the score means "noise" only for kernels
with enough elements (e.g. 5x5 and up, or a linear layer over an image).

Nothing here imports Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

import torch

from recipe_callbacks.core.pictures import Band, line_chart, matrix_chart

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _terms(bank: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per filter: ``(sum_c D, sum_c V)``, each ``(O,)`` float64."""
    if bank.ndim < 3:
        raise ValueError(f"filter bank of shape {tuple(bank.shape)}: expected (O, C, *spatial) with 1-3 spatial dims")
    w = bank.detach().to(torch.float64)
    spatial = tuple(range(2, w.ndim))
    if all(w.shape[d] < 2 for d in spatial):
        raise ValueError(f"filter bank of shape {tuple(bank.shape)}: kernels have no spatial neighbours")
    squared, pairs = torch.zeros(w.shape[:2], dtype=torch.float64), 0
    for d in spatial:
        if w.shape[d] < 2:
            continue
        diff = w.diff(dim=d)  # neighbours along axis d
        squared = squared + diff.pow(2).flatten(2).sum(dim=2)
        pairs += diff[0, 0].numel()
    mean_sq_diff = squared / pairs  # (O, C)
    variance = w.flatten(2).var(dim=2, unbiased=True)  # (O, C)
    return mean_sq_diff.sum(dim=1), variance.sum(dim=1)


def filter_noise_scores(bank: torch.Tensor) -> torch.Tensor:
    """The noise score of each filter of ``(O, C, *spatial)``: about 1 for i.i.d. noise, near 0 for
    smooth filters; NaN for a constant filter.

    Raises:
        ValueError: for fewer than 3 dims or kernels without two neighbouring weights.

    Example:
        >>> ramp = torch.arange(5.0).reshape(1, 1, 5)        # as smooth as 5 weights can be
        >>> checker = torch.tensor([[[1.0, -1.0, 1.0, -1.0]]])
        >>> filter_noise_scores(torch.cat([ramp[..., :4], checker])).tolist()
        [0.3, 1.5]
    """
    d, v = _terms(bank)
    return torch.where(v > 0, d / (2 * v.clamp_min(1e-300)), torch.full_like(d, math.nan))


def bank_noise_score(bank: torch.Tensor) -> float:
    """The pooled noise score of a whole bank ``(O, C, *spatial)`` (NaN when every filter is constant).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> round(bank_noise_score(torch.randn(64, 3, 7, 7, generator=g)), 1)
        1.0
    """
    d, v = _terms(bank)
    total = float(v.sum())
    return float(d.sum()) / (2 * total) if total > 0 else math.nan


def bank_from_linear(weight: torch.Tensor, input_shape: Sequence[int]) -> torch.Tensor | None:
    """A ``Linear`` weight ``(O, prod(input_shape))`` as a filter bank over its input's layout.

    ``input_shape`` is one sample's shape: ``(H, W)`` gives ``(O, 1, H, W)``, ``(C, H, W)`` gives
    ``(O, C, H, W)``, ``(C, D, H, W)`` gives ``(O, C, D, H, W)``. ``None`` when the weight does
    not span the whole input or the input has no spatial layout (plain feature vectors).

    Example:
        >>> bank_from_linear(torch.zeros(5, 12), (3, 2, 2)).shape
        torch.Size([5, 3, 2, 2])
        >>> bank_from_linear(torch.zeros(5, 12), (12,)) is None
        True
    """
    shape = tuple(int(s) for s in input_shape)
    if weight.ndim != 2 or len(shape) < 2 or len(shape) > 4 or math.prod(shape) != weight.shape[1]:
        return None
    if len(shape) == 2:
        shape = (1, *shape)
    return weight.reshape(weight.shape[0], *shape)


def filter_tiles(bank: torch.Tensor, max_filters: int | None = None) -> tuple[torch.Tensor, int]:
    """The pictures of a bank ``(O, C, *spatial)`` as ``(N, 1|3, H, W)`` tiles and a column count.

    Three input channels are shown as one colour tile per filter (``(O, 3, H, W)``); any other
    channel count as one grey tile per filter and channel (``(O * C, 1, H, W)``, filter-major,
    one filter per row when ``C`` > 1). 1-D kernels become ``1 x L`` strips; the depth slices of
    3-D kernels are laid side by side (``(H, D * W)``). Only the first ``max_filters`` filters.

    Example:
        >>> tiles, ncols = filter_tiles(torch.zeros(16, 3, 5, 5))
        >>> tuple(tiles.shape), ncols
        ((16, 3, 5, 5), 4)
        >>> tiles, ncols = filter_tiles(torch.zeros(4, 2, 7))
        >>> tuple(tiles.shape), ncols
        ((8, 1, 1, 7), 2)
    """
    if bank.ndim not in (3, 4, 5):
        raise ValueError(f"filter bank of shape {tuple(bank.shape)}: expected (O, C, *spatial) with 1-3 spatial dims")
    w = bank.detach()
    if max_filters is not None:
        w = w[:max_filters]
    if w.ndim == 3:  # (O, C, L) -> (O, C, 1, L)
        w = w.unsqueeze(2)
    elif w.ndim == 5:  # (O, C, D, H, W) -> (O, C, H, D * W)
        o, c, depth, h, width = w.shape
        w = w.permute(0, 1, 3, 2, 4).reshape(o, c, h, depth * width)
    o, c = w.shape[:2]
    if c == 3:
        return w, max(1, math.ceil(math.sqrt(o)))
    tiles = w.reshape(o * c, 1, *w.shape[2:])
    ncols = c if 1 < c <= 16 else max(1, math.ceil(math.sqrt(o * c)))
    return tiles, ncols


#: What the first layer's filters show at the end of training, judged by evidence (see :func:`judge_filters`).
FilterVerdict = Literal["small_kernel", "structured", "frozen", "too_little_training", "noisy", "emerging"]


def judge_filters(
    score: float, kernel_size: int, steps: int, change: float, change_score: float, *, threshold: float,
    min_kernel_size: int, min_change: float,
) -> FilterVerdict:
    """The verdict on a filter bank with noise ``score`` after ``steps`` optimizer steps, its weights
    moved ``change`` times the norm of their init by a learned change of noise score ``change_score``:

    - ``small_kernel``: kernels below ``min_kernel_size`` weights (or no score): not judged;
    - ``structured``: the score at most ``threshold``;
    - ``frozen``: still noise-like and exactly at init after optimizer steps;
    - ``too_little_training``: moved less than ``min_change``: the random init dominates;
    - ``noisy``: moved that far and the learned change is itself noise-like;
    - ``emerging``: moved that far and the learned change is smooth.

    Example:
        >>> kw = dict(threshold=0.8, min_kernel_size=16, min_change=1.0)
        >>> judge_filters(0.5, 25, 100, 2.0, 0.3, **kw), judge_filters(1.0, 25, 100, 0.0, math.nan, **kw)
        ('structured', 'frozen')
        >>> judge_filters(1.0, 25, 10, 0.2, 0.3, **kw), judge_filters(1.0, 25, 900, 2.0, 1.0, **kw)
        ('too_little_training', 'noisy')
    """
    if kernel_size < min_kernel_size or math.isnan(score):
        return "small_kernel"
    if score <= threshold:
        return "structured"
    if steps > 0 and change == 0.0:
        return "frozen"
    if change < min_change:
        return "too_little_training"
    return "noisy" if change_score > threshold else "emerging"


def learned_change(
    weight: torch.Tensor, initial: torch.Tensor | None, as_bank: Callable[[torch.Tensor], torch.Tensor | None]
) -> tuple[float, float]:
    """``(||W - W0|| / ||W0||, noise score of W - W0)`` (the change laid out as a bank by ``as_bank``);
    NaNs without a usable ``W0``, a NaN score when nothing changed or the change has no layout.

    Example:
        >>> w0 = torch.randn(4, 1, 5, 5, generator=torch.Generator().manual_seed(0))
        >>> learned_change(w0 * 3, w0, lambda t: t)[0]
        2.0
    """
    if initial is None or initial.shape != weight.shape or float(initial.norm()) == 0.0:
        return math.nan, math.nan
    delta = weight - initial
    change = float(delta.norm() / initial.norm())
    bank = as_bank(delta)
    if change == 0.0 or bank is None:
        return change, math.nan
    return change, bank_noise_score(bank)


def weights_figure(weight: torch.Tensor, layer_name: str) -> Figure:
    """The weight matrix of a first ``Linear`` over plain features: one row per unit, a diverging
    colour scale centred on 0 with a colour bar.

    Example:
        >>> from recipe_callbacks.core.pictures import figure_to_image
        >>> figure_to_image(weights_figure(torch.eye(3), "net.0")).shape
        (360, 480, 3)
    """
    peak = float(weight.abs().max()) or 1.0
    return matrix_chart(
        weight, vmin=-peak, vmax=peak, cmap="RdBu_r", colorbar_label="weight",
        title=f"FirstLayerFilterViz: weights of {layer_name!r}, one row per unit (no spatial layout)",
        xlabel="input feature", ylabel="output unit",
    )


def noise_score_chart(scores: Sequence[tuple[int, float]], layer_name: str, threshold: float) -> Figure:
    """The noise score of each drawing (global step, score) against ``threshold`` (the structured band shaded).

    Example:
        >>> from recipe_callbacks.core.pictures import figure_to_image
        >>> figure_to_image(noise_score_chart([(0, 1.0), (10, 0.6)], "conv1", 0.8)).shape
        (360, 480, 3)
    """
    return line_chart(
        {"noise score": [v for _, v in scores]}, x=[s for s, _ in scores],
        title=f"FirstLayerFilterViz: the noise score of {layer_name!r} must fall below the threshold "
        "(noise is about 1)",
        xlabel="global step", ylabel="noise score", band=Band(0.0, threshold, "structured filters"),
        hlines={f"noise_threshold {threshold:g}": threshold},
    )
