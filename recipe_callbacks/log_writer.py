"""The one place that finds the Trainer's loggers and writes scalars, pictures, text and histograms.

Scalars go to every logger (``logger.log_metrics``). Pictures, text and histograms go to every
``TensorBoardLogger``; without one they are saved as PNG / Markdown files under
``<log_dir>/recipe/`` and a message says so once. Only global rank 0 writes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

import numpy as np
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info

from recipe_callbacks.core.pictures import bar_chart, figure_to_image, to_png

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from matplotlib.figure import Figure

_ANNOUNCED_DIRS: set[str] = set()
# the scalar tags written through each Trainer, for RecipeReport's Custom Scalars layout
_SCALAR_TAGS: WeakKeyDictionary[Any, set[str]] = WeakKeyDictionary()


def run_log_dir(trainer: pl.Trainer) -> Path:
    """The run's log dir, as ``trainer.log_dir`` gives it, without its collective broadcast.

    ``trainer.log_dir`` broadcasts from rank 0 and so stalls when only rank 0 calls it; the
    writers here run on rank 0 only.
    """
    loggers = trainer.loggers
    if loggers:
        first = loggers[0]
        path = first.log_dir if isinstance(first, (TensorBoardLogger, CSVLogger)) else first.save_dir
        if path is not None:
            return Path(path)
    return Path(trainer.default_root_dir)


def recipe_file_dir(trainer: pl.Trainer) -> Path:
    """``<log_dir>/recipe``: where pictures and text land when no TensorBoard logger is present."""
    return run_log_dir(trainer) / "recipe"


def tensorboard_writers(trainer: pl.Trainer) -> list[Any]:
    """The ``SummaryWriter`` of every ``TensorBoardLogger`` on the Trainer."""
    return [lg.experiment for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]


def _step(trainer: pl.Trainer, step: int | None) -> int:
    return int(trainer.global_step if step is None else step)


def log_scalars(trainer: pl.Trainer, values: Mapping[str, float], step: int | None = None) -> None:
    """Write ``{tag: value}`` to every logger at ``step`` (default: the global step)."""
    if not trainer.is_global_zero or not values:
        return
    metrics = {tag: float(v) for tag, v in values.items()}
    _SCALAR_TAGS.setdefault(trainer, set()).update(metrics)
    for lg in trainer.loggers:
        lg.log_metrics(metrics, step=_step(trainer, step))


def scalar_tags(trainer: pl.Trainer) -> set[str]:
    """Every scalar tag written through :func:`log_scalars` for this Trainer so far."""
    return set(_SCALAR_TAGS.get(trainer, ()))


def _file_path(trainer: pl.Trainer, tag: str, step: int, suffix: str) -> Path:
    relative = tag.removeprefix("recipe.").removeprefix("recipe/").replace("/", os.sep)
    path = recipe_file_dir(trainer) / relative / f"step_{step:07d}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    root = str(recipe_file_dir(trainer))
    if root not in _ANNOUNCED_DIRS:
        _ANNOUNCED_DIRS.add(root)
        rank_zero_info(f"recipe_callbacks: no TensorBoardLogger on the Trainer; pictures and text go to {root}")
    return path


def log_image(trainer: pl.Trainer, tag: str, image: np.ndarray, step: int | None = None) -> None:
    """Write an ``(H, W, 3)`` uint8 picture under ``tag``."""
    if not trainer.is_global_zero:
        return
    s = _step(trainer, step)
    writers = tensorboard_writers(trainer)
    for writer in writers:
        writer.add_image(tag, image, global_step=s, dataformats="HWC")
    if not writers:
        to_png(image, str(_file_path(trainer, tag, s, ".png")))


def log_figure(trainer: pl.Trainer, tag: str, figure: Figure, step: int | None = None) -> None:
    """Write a matplotlib figure under ``tag``: rendered once to a picture, then as :func:`log_image`."""
    if trainer.is_global_zero:
        log_image(trainer, tag, figure_to_image(figure), step)


def log_text(trainer: pl.Trainer, tag: str, text: str, step: int | None = None) -> None:
    """Write Markdown ``text`` under ``tag``."""
    if not trainer.is_global_zero:
        return
    s = _step(trainer, step)
    writers = tensorboard_writers(trainer)
    for writer in writers:
        writer.add_text(tag, text, global_step=s)
    if not writers:
        _file_path(trainer, tag, s, ".md").write_text(text, encoding="utf-8")


def log_histogram(trainer: pl.Trainer, tag: str, values: torch.Tensor, step: int | None = None) -> None:
    """Write the distribution of ``values`` under ``tag`` (a PNG bar chart without TensorBoard)."""
    if not trainer.is_global_zero:
        return
    s = _step(trainer, step)
    data = values.detach().flatten().to(torch.float64).cpu()
    data = data[torch.isfinite(data)]
    if data.numel() == 0:
        return
    writers = tensorboard_writers(trainer)
    for writer in writers:
        writer.add_histogram(tag, data.numpy(), global_step=s)
    if not writers:
        counts, edges = np.histogram(data.numpy(), bins=30)
        labels = [f"{e:.2g}" for e in edges[:-1]]
        chart = bar_chart(labels, counts.tolist(), title=f"{tag}: distribution of {data.numel()} values",
                          xlabel="bin (left edge)", ylabel="count")
        to_png(figure_to_image(chart), str(_file_path(trainer, tag, s, ".png")))
