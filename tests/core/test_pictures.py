"""Pictures: matplotlib charts carry their title, labelled axes, legend, colour bar and band; image
grids place each sample exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.colors import LogNorm
from matplotlib.patches import Rectangle

from recipe_callbacks.core.pictures import (
    FIGURE_SHAPE,
    Band,
    Mark,
    band_chart,
    bar_chart,
    figure_to_image,
    image_grid,
    line_chart,
    matrix_chart,
)


def test_image_grid_places_each_normalised_image() -> None:
    images = torch.stack([torch.zeros(1, 2, 2), torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])])
    grid = image_grid(images, ncols=2, min_cell=2, pad=1)
    assert grid.shape == (2 + 2, 2 * 2 + 3, 3)
    # the second image, min-max scaled to [0, 1], lands at rows 1-2, columns 4-5, grey in every channel
    expected = np.round(np.array([[0.0, 1 / 3], [2 / 3, 1.0]]) * 255).astype(np.uint8)
    assert np.array_equal(grid[1:3, 4:6, 0], expected) and np.array_equal(grid[1:3, 4:6, 2], expected)
    assert (grid[1:3, 1:3] == 127).all() or (grid[1:3, 1:3] == 128).all()  # a constant image is mid-grey


def test_image_grid_captions_are_drawn_below_each_tile() -> None:
    plain = image_grid(torch.ones(2, 1, 8, 8), ncols=2, min_cell=16, pad=0)
    captioned = image_grid(torch.ones(2, 1, 8, 8), ncols=2, min_cell=16, pad=0, captions=["y=1 p=1", "y=2 p=0"])
    assert captioned.shape[0] > plain.shape[0]
    below = captioned[16:]
    assert (below < 128).any(), "no caption text below the tiles"


def test_line_chart_has_title_labels_legend_band_and_reference_lines() -> None:
    fig = line_chart(
        {"net.0": [1e-3, 2e-3, 1e-3], "net.1": [1e-4, 1e-4, 2e-4]},
        x=[0, 10, 20], title="ratios", xlabel="optimizer step", ylabel="ratio", log_y=True,
        band=Band(1e-4, 1e-2, "healthy"), hlines={"max_ratio": 0.1}, marks=[Mark(10, 2e-3, "spike")],
    )
    ax = fig.axes[0]
    assert ax.get_title() == "ratios" and ax.get_xlabel() == "optimizer step" and ax.get_ylabel() == "ratio"
    assert ax.get_yscale() == "log"
    labels = ax.get_legend_handles_labels()[1]
    assert {"net.0", "net.1", "healthy", "max_ratio"} <= set(labels)
    assert any(t.get_text() == "spike" for t in ax.texts)
    picture = figure_to_image(fig)  # 5 legend entries: their own rows under the axes, the picture grows
    assert picture.shape[1] == FIGURE_SHAPE[1] and picture.shape[0] > FIGURE_SHAPE[0]
    assert figure_to_image(line_chart({"a": [1.0, 2.0]})).shape == FIGURE_SHAPE


def test_line_chart_of_a_constant_lr_shows_the_lr_itself_on_its_axis() -> None:
    fig = line_chart({"lr": [3e-4] * 10}, ylabel="learning rate", y_from_zero=True)
    ax = fig.axes[0]
    figure_to_image(fig)  # tick labels are set when drawn
    low, high = ax.get_ylim()
    assert low == 0.0 and 3e-4 < high < 4e-4
    ticks = [t.get_text() for t in ax.get_yticklabels()]
    assert "0.00030" in ticks, ticks  # no offset notation: the LR is read off the axis as it is
    assert ax.yaxis.get_offset_text().get_text() == ""


def test_bar_chart_bar_heights_follow_values_and_flagged_bars_are_red() -> None:
    fig = bar_chart(["a", "b", "c"], [4.0, 2.0, 0.0], xlabel="class", ylabel="samples", flagged=[2],
                    flagged_label="missing", reference=(1.0, "one"))
    ax = fig.axes[0]
    bars = [p for p in ax.patches if isinstance(p, Rectangle) and np.isfinite(p.get_height())]
    assert [b.get_height() for b in bars[:3]] == [4.0, 2.0, 0.0]
    assert bars[2].get_facecolor() != bars[0].get_facecolor()
    assert {"missing", "one"} <= set(ax.get_legend_handles_labels()[1])
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]


def test_matrix_chart_has_a_colour_bar_with_its_scale_and_outlined_marks() -> None:
    fig = matrix_chart(np.eye(4), title="deps", xlabel="input", ylabel="output", colorbar_label="strength",
                       log_scale=True, vmin=1e-6, vmax=1.0, marks=[(0, 3)], marks_label="leak")
    ax, bar = fig.axes
    assert bar.get_ylabel() == "strength"
    image = ax.get_images()[0]
    assert isinstance(image.norm, LogNorm) and image.norm.vmin == 1e-6 and image.norm.vmax == 1.0
    outlines = [p for p in ax.patches if isinstance(p, Rectangle)]
    assert len(outlines) == 1 and outlines[0].get_xy() == (2.5, -0.5)
    assert "leak" in ax.get_legend_handles_labels()[1]


def test_matrix_chart_rejects_a_vector() -> None:
    with pytest.raises(ValueError, match="matrix_chart"):
        matrix_chart(np.zeros(3))


def test_band_chart_marks_a_number_outside_its_band() -> None:
    fig = band_chart({"inside": 2.0, "outside": 5.0}, Band(1.5, 3.0, "expected"), xlabel="loss")
    ax = fig.axes[0]
    inside, outside = (line.get_color() for line in ax.lines if line.get_marker() == "o")
    assert inside != outside
    assert [t.get_text() for t in ax.get_yticklabels()] == ["inside", "outside"]
