"""Pictures: shapes, exact pixels where they are defined, and legends that do not overlap."""

from __future__ import annotations

import numpy as np
import torch

from recipe_callbacks.core.pictures import bar_chart, colormap, heatmap, image_grid, line_chart


def test_image_grid_places_each_normalised_image() -> None:
    images = torch.stack([torch.zeros(1, 2, 2), torch.tensor([[[0.0, 1.0], [2.0, 3.0]]])])
    grid = image_grid(images, ncols=2, min_cell=2, pad=1)
    assert grid.shape == (2 + 2, 2 * 2 + 3, 3)
    # the second image, min-max scaled to [0, 1], lands at rows 1-2, columns 4-5, grey in every channel
    expected = np.round(np.array([[0.0, 1 / 3], [2 / 3, 1.0]]) * 255).astype(np.uint8)
    assert np.array_equal(grid[1:3, 4:6, 0], expected) and np.array_equal(grid[1:3, 4:6, 2], expected)
    assert (grid[1:3, 1:3] == 127).all() or (grid[1:3, 1:3] == 128).all()  # a constant image is mid-grey


def test_heatmap_and_colormap_ends() -> None:
    pic = heatmap(np.array([[0.0, 1.0]]), cell=3)
    assert pic.shape == (3, 6, 3)
    assert pic[0, 0].tolist() == [68, 1, 84] and pic[0, 5].tolist() == [253, 231, 37]
    assert colormap(np.array([np.nan])).tolist() == [[200, 200, 200]]


def test_line_chart_gives_every_legend_entry_its_own_row_space() -> None:
    few = line_chart({f"s{i}": [1.0, 2.0] for i in range(3)})
    many = line_chart({f"s{i}": [1.0, 2.0] for i in range(12)})
    assert few.shape == (360, 640, 3)
    assert many.shape[0] > few.shape[0]  # extra legend rows, not entries drawn over each other


def test_bar_chart_bar_heights_follow_values() -> None:
    pic = bar_chart(["a", "b"], [4.0, 2.0], width=200, height=120)
    column_a, column_b = pic[:, 50, :], pic[:, 150, :]
    filled = lambda col: int((np.abs(col.astype(int) - [31, 119, 180]).sum(axis=1) == 0).sum())  # noqa: E731
    assert filled(column_a) > 0 and abs(filled(column_a) - 2 * filled(column_b)) <= 2
