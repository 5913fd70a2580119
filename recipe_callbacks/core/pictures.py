"""Pictures as ``uint8`` arrays of shape ``(H, W, 3)``: image grids, heat maps, line and bar charts.

Drawn with Pillow only, so the package needs no plotting library at run time. Every function
returns an array that ``SummaryWriter.add_image(..., dataformats="HWC")`` or a PNG writer takes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

# Anchor colours of the viridis map; intermediate values are interpolated linearly.
_VIRIDIS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)
# Distinct line colours for charts (Tableau 10).
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
)
WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
GREY = (200, 200, 200)


def colormap(values: np.ndarray, vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Map an array of any shape to viridis colours; returns ``values.shape + (3,)`` uint8.

    NaN maps to grey.

    Example:
        >>> colormap(np.array([0.0, 1.0])).tolist()
        [[68, 1, 84], [253, 231, 37]]
    """
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    lo = float(np.min(v[finite])) if vmin is None and finite.any() else (vmin or 0.0)
    hi = float(np.max(v[finite])) if vmax is None and finite.any() else (vmax if vmax is not None else 1.0)
    scale = (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
    pos = np.clip(np.nan_to_num(scale), 0.0, 1.0) * (len(_VIRIDIS) - 1)
    idx = np.minimum(pos.astype(np.int64), len(_VIRIDIS) - 2)
    frac = (pos - idx)[..., None]
    rgb = _VIRIDIS[idx] * (1 - frac) + _VIRIDIS[idx + 1] * frac
    rgb[~finite] = GREY
    out: np.ndarray = np.round(rgb).astype(np.uint8)
    return out


def _to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` float in [0, 1] with C in {1, 3} to ``(H, W, 3)`` uint8."""
    chw = np.clip(image, 0.0, 1.0)
    if chw.shape[0] == 1:
        chw = np.repeat(chw, 3, axis=0)
    out: np.ndarray = np.round(chw.transpose(1, 2, 0) * 255).astype(np.uint8)
    return out


def normalize_each(images: torch.Tensor) -> torch.Tensor:
    """Min-max scale each image of ``(N, C, H, W)`` to [0, 1] on its own (constant images become 0.5).

    Example:
        >>> normalize_each(torch.tensor([[[[0.0, 2.0]]]])).tolist()
        [[[[0.0, 1.0]]]]
    """
    flat = images.detach().to(torch.float64).reshape(images.shape[0], -1)
    flat = torch.nan_to_num(flat, nan=0.0, posinf=0.0, neginf=0.0)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(1e-300), torch.full_like(flat, 0.5))
    return out.reshape(images.shape)


def image_grid(
    images: torch.Tensor,
    *,
    ncols: int | None = None,
    captions: Sequence[str] | None = None,
    normalize: bool = True,
    min_cell: int = 48,
    pad: int = 2,
) -> np.ndarray:
    """Tile ``(N, C, H, W)`` images (C is 1 or 3) into one ``(H, W, 3)`` uint8 picture.

    Each image is scaled to [0, 1] on its own when ``normalize`` (else clipped), enlarged by an
    integer factor (nearest neighbour) to at least ``min_cell`` pixels, and captioned below when
    ``captions`` are given.

    Example:
        >>> image_grid(torch.zeros(4, 1, 8, 8), ncols=2, min_cell=8, pad=0).shape
        (16, 16, 3)
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"image_grid(images.shape={tuple(images.shape)}): expected (N, 1|3, H, W)")
    n, _, h, w = images.shape
    data = normalize_each(images) if normalize else images.detach().to(torch.float64).clamp(0, 1)
    factor = max(1, math.ceil(min_cell / max(h, w)))
    cols = ncols or max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / cols))
    caption_h = 12 if captions else 0
    cell_h, cell_w = h * factor + caption_h, w * factor
    canvas = np.full((rows * (cell_h + pad) + pad, cols * (cell_w + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        tile = _to_uint8_rgb(data[i].cpu().numpy()).repeat(factor, axis=0).repeat(factor, axis=1)
        top, left = pad + r * (cell_h + pad), pad + c * (cell_w + pad)
        canvas[top : top + h * factor, left : left + w * factor] = tile
    if captions:
        pil = Image.fromarray(canvas)
        draw = ImageDraw.Draw(pil)
        for i, text in enumerate(captions[:n]):
            r, c = divmod(i, cols)
            top, left = pad + r * (cell_h + pad) + h * factor, pad + c * (cell_w + pad)
            draw.text((left + 1, top), str(text)[: max(1, cell_w // 6)], fill=BLACK)
        canvas = np.asarray(pil)
    return canvas


def heatmap(
    matrix: np.ndarray | torch.Tensor,
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    cell: int = 8,
    max_side: int = 1024,
) -> np.ndarray:
    """A 2-D matrix as a viridis picture, each entry a ``cell`` x ``cell`` square (rows top-down).

    Example:
        >>> heatmap(np.eye(3), cell=2).shape
        (6, 6, 3)
    """
    m = matrix.detach().cpu().double().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)
    if m.ndim != 2:
        raise ValueError(f"heatmap(matrix.shape={m.shape}): expected a 2-D matrix")
    size = max(1, min(cell, max_side // max(1, max(m.shape))))
    return colormap(m, vmin, vmax).repeat(size, axis=0).repeat(size, axis=1)


def _frame(width: int, height: int, title: str) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    pil = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(pil)
    draw.text((6, 4), title, fill=BLACK)
    return pil, draw


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def line_chart(
    series: Mapping[str, Sequence[float]],
    *,
    x: Sequence[float] | None = None,
    title: str = "",
    log_y: bool = False,
    width: int = 640,
    height: int = 360,
) -> np.ndarray:
    """Lines, one per named series, over a shared x (default 0, 1, 2, ...), with a legend.

    ``log_y`` plots ``log10`` of positive values (others are dropped).

    Example:
        >>> line_chart({"lr": [1.0, 0.5, 0.25]}, title="LR").shape
        (360, 640, 3)
    """
    per_row = max(1, (width - 68) // 110)
    legend_rows = max(1, math.ceil(len(series) / per_row))
    height += 10 * (legend_rows - 1)  # grow the picture so that every legend entry has its own place
    pil, draw = _frame(width, height, title)
    left, right, top, bottom = 60, width - 10, 22, height - 18 - 10 * legend_rows
    ys: dict[str, np.ndarray] = {}
    for name, values in series.items():
        arr = np.asarray(list(values), dtype=np.float64)
        if log_y:
            arr = np.where(arr > 0, np.log10(np.where(arr > 0, arr, 1.0)), np.nan)
        ys[name] = arr
    longest = max((len(a) for a in ys.values()), default=0)
    xs = np.asarray(list(x), dtype=np.float64) if x is not None else np.arange(longest, dtype=np.float64)
    finite = [a[np.isfinite(a)] for a in ys.values()]
    finite_all = np.concatenate(finite) if finite else np.array([])
    if finite_all.size == 0 or xs.size == 0:
        draw.text((left, height // 2), "no finite values", fill=BLACK)
        return np.asarray(pil)
    y_lo, y_hi = float(finite_all.min()), float(finite_all.max())
    if y_hi == y_lo:
        y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
    x_lo, x_hi = float(xs.min()), float(xs.max()) if xs.max() > xs.min() else float(xs.min()) + 1.0
    draw.rectangle((left, top, right, bottom), outline=BLACK)

    def px(xv: float, yv: float) -> tuple[float, float]:
        return (
            left + (xv - x_lo) / (x_hi - x_lo) * (right - left),
            bottom - (yv - y_lo) / (y_hi - y_lo) * (bottom - top),
        )

    prefix = "10^" if log_y else ""
    draw.text((2, top), prefix + _fmt(y_hi), fill=BLACK)
    draw.text((2, bottom - 10), prefix + _fmt(y_lo), fill=BLACK)
    draw.text((left, bottom + 4), _fmt(x_lo), fill=BLACK)
    draw.text((right - 40, bottom + 4), _fmt(x_hi), fill=BLACK)
    for k, (name, arr) in enumerate(ys.items()):
        colour = PALETTE[k % len(PALETTE)]
        points = [px(float(xs[i]), float(arr[i])) for i in range(min(len(arr), len(xs))) if np.isfinite(arr[i])]
        if len(points) == 1:
            (cx, cy) = points[0]
            draw.ellipse((cx - 2, cy - 2, cx + 2, cy + 2), fill=colour)
        elif points:
            draw.line(points, fill=colour, width=2)
        draw.text((left + 8 + 110 * (k % per_row), bottom + 14 + 10 * (k // per_row)), name[:16], fill=colour)
    return np.asarray(pil)


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str = "",
    width: int = 640,
    height: int = 320,
) -> np.ndarray:
    """Vertical bars, one per label, with the value above each bar.

    Example:
        >>> bar_chart(["0", "1"], [3, 1]).shape
        (320, 640, 3)
    """
    pil, draw = _frame(width, height, title)
    left, right, top, bottom = 10, width - 10, 34, height - 20
    vals = np.nan_to_num(np.asarray(list(values), dtype=np.float64))
    n = max(1, len(vals))
    peak = float(vals.max()) if vals.size and vals.max() > 0 else 1.0
    slot = (right - left) / n
    for i, v in enumerate(vals):
        x0 = left + i * slot + slot * 0.1
        x1 = left + (i + 1) * slot - slot * 0.1
        y0 = bottom - (max(v, 0.0) / peak) * (bottom - top)
        draw.rectangle((x0, y0, x1, bottom), fill=PALETTE[0])
        if slot >= 18:
            draw.text((x0, bottom + 3), str(labels[i])[: max(1, int(slot // 6))], fill=BLACK)
            draw.text((x0, y0 - 11), _fmt(float(v)), fill=BLACK)
    return np.asarray(pil)


def to_png(image: np.ndarray, path: str) -> None:
    """Write an ``(H, W, 3)`` uint8 picture as PNG."""
    Image.fromarray(np.ascontiguousarray(image)).save(path, format="PNG")
