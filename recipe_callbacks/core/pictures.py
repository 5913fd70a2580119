"""Pictures: matplotlib charts (line, bar, matrix) and captioned image grids of samples.

Charts are ``matplotlib.figure.Figure`` objects drawn on the Agg canvas, never through
``pyplot``: no global state, no display, safe in any thread. Each one carries a title that says
what to look for, labelled axes with units and real tick values, a legend, a colour bar with its
scale, the healthy band shaded where one exists and the flagged entries marked.
:func:`figure_to_image` turns a figure into the ``(H, W, 3)`` uint8 array every logger takes.
Image grids of samples stay pixel arrays (one tile per sample, captioned below).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
import numpy as np
import torch
from matplotlib import colors
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, MaxNLocator
from PIL import Image, ImageDraw, ImageFont

# 480 x 360 pixels: TensorBoard shows a picture in a card about 330-390 pixels wide, so the
# figure is small and its text large (10-12 pt), and stays legible there without zooming.
FIGSIZE = (5.0, 3.75)
DPI = 96
FIGURE_SHAPE = (round(FIGSIZE[1] * DPI), round(FIGSIZE[0] * DPI), 3)  # (H, W, 3) of a chart's picture
HEALTHY = "tab:green"
FLAGGED = "tab:red"
_RC = {"font.size": 10.5, "axes.titlesize": 11.5, "axes.labelsize": 11.0, "legend.fontsize": 9.0}


@dataclass(frozen=True)
class Band:
    """A horizontal range shaded on a chart: the healthy band of a quantity, with its legend label."""

    low: float
    high: float
    label: str


@dataclass(frozen=True)
class Mark:
    """A point marked and labelled on a chart or matrix: a leak, an outlier, a NaN step."""

    x: float
    y: float
    label: str


def new_figure(size: tuple[float, float] = FIGSIZE) -> Figure:
    """An empty figure on the Agg canvas with the package's font sizes."""
    fig = Figure(figsize=size, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _title(text: str, width: int = 48) -> str:
    return "\n".join(textwrap.wrap(text, width)) if text else ""


def _apply_fonts(fig: Figure) -> None:
    for ax in fig.axes:
        ax.title.set_fontsize(_RC["axes.titlesize"])
        ax.xaxis.label.set_fontsize(_RC["axes.labelsize"])
        ax.yaxis.label.set_fontsize(_RC["axes.labelsize"])
        ax.tick_params(labelsize=_RC["font.size"])
        legend = ax.get_legend()
        if legend is not None:
            for text in legend.get_texts():
                text.set_fontsize(_RC["legend.fontsize"])


def line_chart(
    series: Mapping[str, Sequence[float]],
    *,
    x: Sequence[float] | None = None,
    title: str = "",
    xlabel: str = "step",
    ylabel: str = "",
    log_y: bool = False,
    band: Band | None = None,
    hlines: Mapping[str, float] | None = None,
    marks: Sequence[Mark] = (),
    styles: Mapping[str, str] | None = None,
    y_from_zero: bool = False,
) -> Figure:
    """Lines, one per named series, over a shared x (default 0, 1, 2, ...), with a legend.

    ``log_y`` draws a log axis (non-positive values are left out); ``band`` shades a healthy
    range; ``hlines`` draws labelled dashed reference lines; ``marks`` labels single points;
    ``styles`` gives a matplotlib line style per series name (e.g. ``"--"``); ``y_from_zero``
    starts a linear y axis at 0 (a constant learning rate then shows its own value). NaN breaks a line.

    Example:
        >>> fig = line_chart({"lr": [1.0, 0.5, 0.25]}, title="LR", ylabel="learning rate")
        >>> figure_to_image(fig).shape
        (360, 480, 3)
    """
    entries = len(series) + (band is not None) + len(hlines or {})
    below = entries > 3  # many entries: the legend goes under the axes, so it covers no line
    rows = math.ceil(entries / 2) if below else 0
    fig = new_figure((FIGSIZE[0], FIGSIZE[1] + 0.2 * rows))
    ax = fig.add_subplot()
    styles = dict(styles or {})
    longest = max((len(v) for v in series.values()), default=0)
    xs = np.asarray(list(x), dtype=np.float64) if x is not None else np.arange(longest, dtype=np.float64)
    drawn = 0
    for name, values in series.items():
        ys = np.asarray(list(values), dtype=np.float64)[: len(xs)]
        if log_y:
            ys = np.where(ys > 0, ys, np.nan)
        if not np.isfinite(ys).any():
            continue
        drawn += 1
        single = int(np.isfinite(ys).sum()) == 1
        ax.plot(xs[: len(ys)], ys, styles.get(name, "-"), label=name, linewidth=1.6, marker="o" if single else None)
    _references(ax, band, hlines or {}, marks, log_y)
    _y_axis(ax, series, log_y, y_from_zero and drawn > 0)
    if not drawn:
        ax.text(0.5, 0.5, "no finite values to draw", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(_title(title))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if x is None or all(float(v).is_integer() for v in xs):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ax.get_legend_handles_labels()[0]:
        if below:
            fig.legend(loc="outside lower center", ncols=2, fontsize=_RC["legend.fontsize"], frameon=False)
        else:
            ax.legend(loc="best", framealpha=0.85)
    _apply_fonts(fig)
    return fig


def _references(ax: Any, band: Band | None, hlines: Mapping[str, float], marks: Sequence[Mark], log_y: bool) -> None:
    """A line chart's healthy band, labelled reference lines and marked points."""
    if band is not None:
        ax.axhspan(band.low, band.high, color=HEALTHY, alpha=0.15, label=band.label, zorder=0)
    for k, (name, value) in enumerate(hlines.items()):
        if math.isfinite(value) and (value > 0 or not log_y):
            ax.axhline(value, linestyle=("--", ":", "-.")[k % 3], linewidth=1.4, color="black", label=name)
    for mark in marks:
        if math.isfinite(mark.y) or not log_y:
            y = mark.y if math.isfinite(mark.y) else float(np.nanmax(ax.get_ylim()))
            ax.plot([mark.x], [y], "X", color=FLAGGED, markersize=9, zorder=5)
            ax.annotate(mark.label, (mark.x, y), textcoords="offset points", xytext=(6, 6), color=FLAGGED)


def _y_axis(ax: Any, series: Mapping[str, Sequence[float]], log_y: bool, from_zero: bool) -> None:
    """A line chart's y axis: log, or linear without offset (from 0 when ``from_zero``)."""
    if log_y:
        ax.set_yscale("log")
        return
    ax.ticklabel_format(axis="y", useOffset=False)
    if from_zero:
        every = np.concatenate([np.asarray(list(v), dtype=np.float64) for v in series.values()])
        top = float(every[np.isfinite(every)].max())
        ax.set_ylim(min(0.0, float(every[np.isfinite(every)].min())), top * 1.15 if top > 0 else 1.0)


#: Above this many bars a bar chart draws filled steps instead of one rectangle per bar.
MAX_SEPARATE_BARS = 32


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    reference: tuple[float, str] | None = None,
    band: Band | None = None,
    flagged: Sequence[int] = (),
    flagged_label: str = "flagged",
    second: tuple[Sequence[float], str] | None = None,
    first_label: str = "",
) -> Figure:
    """Vertical bars, one per label; the value above each bar when there are few.

    ``reference`` draws a labelled dashed line (e.g. 1 = matches the prior); ``band`` shades a
    healthy range; ``flagged`` bars are red and named in the legend; ``second`` draws a second
    series of bars beside the first (``first_label`` names the first).

    Example:
        >>> figure_to_image(bar_chart(["0", "1"], [3, 1], ylabel="samples")).shape
        (360, 480, 3)
    """
    fig = new_figure()
    ax = fig.add_subplot()
    vals = np.nan_to_num(np.asarray(list(values), dtype=np.float64))
    pos = np.arange(len(vals), dtype=np.float64)
    many = len(vals) > MAX_SEPARATE_BARS
    if many:  # one filled step outline instead of hundreds of bars: as readable, a fraction of the time
        _stairs(ax, vals, flagged, first_label, second)
    else:
        _bars(ax, vals, flagged, first_label, second)
    if flagged:
        ax.bar([math.nan], [math.nan], color=FLAGGED, label=flagged_label)
    if band is not None:
        ax.axhspan(band.low, band.high, color=HEALTHY, alpha=0.15, label=band.label, zorder=0)
    if reference is not None:
        ax.axhline(reference[0], linestyle="--", color="black", linewidth=1.2, label=reference[1])
    step = max(1, math.ceil(len(labels) / (12 if many else 25)))  # labels that do not run into each other
    shown = pos[::step]
    ax.set_xticks(shown)
    ax.set_xticklabels([str(labels[int(i)]) for i in shown],
                       rotation=0 if max((len(str(s)) for s in labels), default=0) <= 3 else 45)
    ax.set_title(_title(title))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        # "best" weighs every artist: with many bars that alone takes a large share of the drawing
        ax.legend(loc="upper right" if many else "best", framealpha=0.85)
    _apply_fonts(fig)
    return fig


def _bars(ax: Axes, vals: np.ndarray, flagged: Sequence[int], first_label: str,
          second: tuple[Sequence[float], str] | None) -> None:
    pos = np.arange(len(vals), dtype=np.float64)
    width = 0.4 if second is not None else 0.8
    colours = [FLAGGED if i in set(flagged) else "C0" for i in range(len(vals))]
    bars = ax.bar(pos - (width / 2 if second else 0.0), vals, width=width, color=colours, label=first_label or None)
    if second is not None:
        ax.bar(pos + width / 2, np.nan_to_num(np.asarray(list(second[0]), dtype=np.float64)), width=width,
               color="C1", label=second[1])
    if 0 < len(vals) <= 16 and second is None:
        ax.bar_label(bars, labels=[f"{v:.4g}" for v in vals], fontsize=8.5, padding=2)
        ax.margins(y=0.12)


def _stairs(ax: Axes, vals: np.ndarray, flagged: Sequence[int], first_label: str,
            second: tuple[Sequence[float], str] | None) -> None:
    edges = np.arange(len(vals) + 1, dtype=np.float64) - 0.5
    ax.stairs(vals, edges, fill=True, color="C0", alpha=0.75, label=first_label or None)
    if second is not None:
        ax.stairs(np.nan_to_num(np.asarray(list(second[0]), dtype=np.float64)), edges, color="C1",
                  linewidth=1.6, label=second[1])
    if flagged:
        idx = np.asarray(sorted(set(flagged)), dtype=np.int64)
        ax.bar(idx.astype(np.float64), vals[idx], width=1.0, color=FLAGGED)
    ax.set_xlim(edges[0], edges[-1])


def band_chart(
    points: Mapping[str, float],
    band: Band,
    *,
    title: str = "",
    xlabel: str = "",
    reference: tuple[float, str] | None = None,
) -> Figure:
    """Single numbers against the band they should fall in: one labelled row per number.

    A row whose number is outside ``band`` is drawn in red. ``reference`` draws a labelled dashed
    line (e.g. the expected value at the band's centre).

    Example:
        >>> fig = band_chart({"observed": 2.4}, Band(1.7, 2.9, "expected"), xlabel="loss (nats)")
        >>> figure_to_image(fig).shape
        (235, 480, 3)
    """
    fig = new_figure((FIGSIZE[0], 2.0 + 0.45 * len(points)))
    ax = fig.add_subplot()
    ax.axvspan(band.low, band.high, color=HEALTHY, alpha=0.18, label=band.label)
    if reference is not None:
        ax.axvline(reference[0], linestyle="--", color="black", linewidth=1.2, label=reference[1])
    names = list(points)
    finite = [v for v in points.values() if math.isfinite(v)] + [band.low, band.high]
    span = max(finite) - min(finite) or 1.0
    for row, name in enumerate(names):
        value = points[name]
        inside = band.low <= value <= band.high
        colour = "C0" if inside else FLAGGED
        if math.isfinite(value):
            ax.plot([value], [row], "o", color=colour, markersize=9)
            ax.annotate(f"{value:.4g}", (value, row), textcoords="offset points", xytext=(0, 8), ha="center",
                        color=colour)
        else:
            ax.text(max(finite), row, f"{value}", color=FLAGGED, va="center")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(names)
    ax.set_ylim(-0.7, len(names) - 0.3)
    ax.set_xlim(min(finite) - 0.15 * span, max(finite) + 0.15 * span)
    ax.invert_yaxis()
    ax.set_title(_title(title))
    ax.set_xlabel(xlabel)
    ax.grid(True, axis="x", alpha=0.3)
    ax.legend(loc="best", framealpha=0.85)
    _apply_fonts(fig)
    return fig


def matrix_chart(
    matrix: np.ndarray | torch.Tensor,
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    colorbar_label: str = "",
    vmin: float | None = None,
    vmax: float | None = None,
    log_scale: bool = False,
    cmap: str = "viridis",
    marks: Sequence[tuple[int, int]] = (),
    marks_label: str = "flagged",
    x_values: Sequence[float] | None = None,
    y_values: Sequence[float] | None = None,
) -> Figure:
    """A 2-D matrix as a coloured grid (rows top-down) with a colour bar and labelled axes.

    ``log_scale`` colours by ``log10`` (values at or below ``vmin`` get the lowest colour);
    NaN is grey (not measured); ``marks`` are ``(row, column)`` entries outlined in red and named
    ``marks_label`` in the legend; ``x_values`` and ``y_values`` label the columns and rows (e.g.
    training steps, or the indices of the rows kept from a larger matrix).

    Example:
        >>> figure_to_image(matrix_chart(np.eye(3), colorbar_label="strength")).shape
        (360, 480, 3)
    """
    m = matrix.detach().cpu().double().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix, float)
    if m.ndim != 2:
        raise ValueError(f"matrix_chart(matrix.shape={m.shape}): expected a 2-D matrix")
    fig = new_figure()
    ax = fig.add_subplot()
    colour_map = matplotlib.colormaps[cmap].with_extremes(bad="lightgrey")
    finite = m[np.isfinite(m)]
    if log_scale:
        lo = vmin if vmin is not None else float(finite[finite > 0].min()) if (finite > 0).any() else 1e-6
        hi = vmax if vmax is not None else max(float(finite.max()) if finite.size else 1.0, lo * 10)
        shown = np.where(np.isnan(m), np.nan, np.clip(m, lo, hi))
        norm: colors.Normalize = colors.LogNorm(vmin=lo, vmax=hi)
    else:
        lo = vmin if vmin is not None else float(finite.min()) if finite.size else 0.0
        hi = vmax if vmax is not None else float(finite.max()) if finite.size else 1.0
        shown, norm = m, colors.Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1.0)
    rows, cols = m.shape
    extent = (-0.5, cols - 0.5, rows - 0.5, -0.5)
    image = ax.imshow(shown, aspect="auto", cmap=colour_map, norm=norm, interpolation="nearest", extent=extent)
    bar = fig.colorbar(image, ax=ax, pad=0.02)
    bar.set_label(colorbar_label)
    for k, (r, c) in enumerate(marks):
        outline = Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor=FLAGGED, linewidth=2.0)
        outline.set_label(marks_label if k == 0 else "_")
        ax.add_patch(outline)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
    for axis, values, count in ((ax.xaxis, x_values, cols), (ax.yaxis, y_values, rows)):
        if values is not None and len(values) == count:
            axis.set_major_formatter(_index_formatter(list(values)))
            if count <= 20:
                axis.set_ticks(range(count))
    ax.set_title(_title(title, 46))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if marks:
        ax.legend(loc="upper right", framealpha=0.85)
    _apply_fonts(fig)
    return fig


def _index_formatter(values: list[float]) -> FuncFormatter:
    return FuncFormatter(lambda v, _pos: f"{values[round(v)]:g}" if 0 <= round(v) < len(values) else "")


def figure_to_image(fig: Figure) -> np.ndarray:
    """Render a figure to an ``(H, W, 3)`` uint8 array (the one figure-to-picture conversion).

    Example:
        >>> figure_to_image(new_figure((2.0, 1.0))).shape
        (96, 192, 3)
    """
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()  # type: ignore[no-untyped-call]
    rgba = np.asarray(canvas.buffer_rgba())  # type: ignore[no-untyped-call]
    out: np.ndarray = np.ascontiguousarray(rgba[..., :3])
    return out


# ----------------------------------------------------------------------------- image grids


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


_CAPTION_PX = 11


def _caption_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:  # Pillow >= 10.1 ships a scalable default font (keeps the spaces the bitmap font drops)
        return ImageFont.load_default(size=_CAPTION_PX - 2)
    except TypeError:  # pragma: no cover - older Pillow
        return ImageFont.load_default()


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
    caption_h = _CAPTION_PX + 1 if captions else 0
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
        font = _caption_font()
        for i, text in enumerate(captions[:n]):
            r, c = divmod(i, cols)
            top, left = pad + r * (cell_h + pad) + h * factor, pad + c * (cell_w + pad)
            draw.text((left + 1, top), str(text)[: max(1, cell_w // 6)], fill=(0, 0, 0), font=font)
        canvas = np.asarray(pil)
    return canvas


def to_png(image: np.ndarray, path: str) -> None:
    """Write an ``(H, W, 3)`` uint8 picture as PNG."""
    Image.fromarray(np.ascontiguousarray(image)).save(path, format="PNG")
