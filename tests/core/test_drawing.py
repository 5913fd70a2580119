"""The drawing process: the same pictures as drawn inline, drawn while training goes on, and every
failure (a chart that raises, arguments that do not pickle, a process that ends) a picture drawn
here or a warning, never an error of the fit."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image

from recipe_callbacks import RecipeCallback, RecipeWarning
from recipe_callbacks.core.drawing import ENVIRONMENT_VARIABLE, Drawer, render
from recipe_callbacks.core.pictures import Band, image_grid, line_chart
from recipe_callbacks.plumbing import log_writer
from tests import drawing_builders
from tests.support import TinyClassifier, blobs, fast_trainer, loader, read_events


@pytest.fixture
def drawer() -> Any:
    d = Drawer(inline=False)
    yield d
    d.stop()


def test_the_drawing_process_draws_the_same_pixels_as_inline(drawer: Drawer) -> None:
    series = {"real": [3.0, 2.0, 1.5], "zero": [3.0, 2.9, 2.8]}
    chart = drawer.submit(line_chart, series, title="t", band=Band(1.0, 2.0, "ok"), styles={"zero": "--"})
    tiles = torch.rand(4, 3, 8, 8)  # a tensor argument travels as a CPU tensor
    grid = drawer.submit(image_grid, tiles, captions=["a", "b", "c", "d"])
    for drawing, inline in ((chart, render(line_chart, (series,), {"title": "t", "band": Band(1.0, 2.0, "ok"),
                                                                     "styles": {"zero": "--"}})),
                            (grid, render(image_grid, (tiles,), {"captions": ["a", "b", "c", "d"]}))):
        picture = drawing.result(60)
        assert picture is not None, drawing.error
        assert np.array_equal(picture.image, inline.image)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(picture.png)).convert("RGB")), inline.image)
    assert drawer._process is not None and drawer._process.poll() is None  # drawn there, not here


def test_submit_returns_before_the_picture_is_drawn(drawer: Drawer, tmp_path: Path) -> None:
    gate = tmp_path / "go"
    drawing = drawer.submit(drawing_builders.after_file, str(gate), 7)
    assert not drawing.done()  # the caller went on while the drawing process waits for the gate
    gate.touch()
    picture = drawing.result(60)
    assert picture is not None and int(picture.image[0, 0, 0]) == 7


def test_a_chart_that_raises_comes_back_as_its_error(drawer: Drawer) -> None:
    drawing = drawer.submit(drawing_builders.broken, "no data")
    assert drawing.result(60) is None
    assert "RuntimeError: no data" in drawing.error
    wrong = drawer.submit(drawing_builders.flat, (4, 4))
    assert wrong.result(60) is None and "not (H, W, 3)" in wrong.error
    assert drawer.submit(drawing_builders.flat, (2, 2, 3)).result(60) is not None  # and the process goes on


def test_arguments_that_do_not_pickle_are_drawn_here(drawer: Drawer) -> None:
    drawing = drawer.submit(line_chart, {"a": [1.0, 2.0]}, title="t", styles={"a": "-"}, y_from_zero=True)
    assert drawing.result(60) is not None
    local = drawer.submit(drawing_builders.flat, (2, 2, 3), fill=lambda: 5)
    assert local.done()  # drawn at once, here: the lambda cannot reach the drawing process
    assert local.picture is not None and int(local.picture.image[0, 0, 0]) == 5


def test_a_drawing_process_that_ends_leaves_its_pictures_to_be_drawn_here(drawer: Drawer, tmp_path: Path) -> None:
    assert drawer.submit(drawing_builders.flat, (2, 2, 3)).result(60) is not None
    held = drawer.submit(drawing_builders.after_file, str(tmp_path / "never"), 9)
    assert drawer._process is not None
    drawer._process.kill()
    drawer._process.wait(30)
    for _ in range(3000):  # until the reader thread sees the end of the pipe
        if drawer._ended:
            break
        time.sleep(0.01)
    lost = drawer.orphans()
    assert lost == [held] and not held.done()
    (tmp_path / "never").touch()
    held.draw_here()
    assert held.picture is not None and int(held.picture.image[0, 0, 0]) == 9
    after = drawer.submit(drawing_builders.flat, (2, 2, 3))
    assert after.done() and after.picture is not None  # from now on drawn here


def test_inline_drawing_by_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "inline")
    d = Drawer()
    drawing = d.submit(drawing_builders.flat, (2, 2, 3))
    assert d.inline and drawing.done() and d._process is None


class _Draws(RecipeCallback):
    """Logs one picture that draws and one that fails at the first training batch."""

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        if trainer.global_step == 0:
            self.log_figure(trainer, "curve", line_chart, {"loss": [2.0, 1.0, 0.5]}, title="curve")
            self.log_figure(trainer, "broken", drawing_builders.broken, "the chart failed")


def test_a_fit_writes_every_picture_by_its_end_and_a_failed_one_is_a_warning(tmp_path: Path) -> None:
    trainer = fast_trainer(tmp_path, callbacks=[_Draws()], max_epochs=1)
    with pytest.warns(RecipeWarning, match="could not draw the picture recipe._draws/broken: RuntimeError"):
        trainer.fit(TinyClassifier(), loader(blobs(64)), loader(blobs(32, seed=1)))
    assert not log_writer.pending()
    events = read_events(trainer.logger.log_dir)  # type: ignore[union-attr]
    images = events.Images("recipe._draws/curve")
    assert [i.step for i in images] == [0]
    picture = np.asarray(Image.open(io.BytesIO(images[0].encoded_image_string)).convert("RGB"))
    assert np.array_equal(picture, render(line_chart, ({"loss": [2.0, 1.0, 0.5]},), {"title": "curve"}).image)
    assert "recipe._draws/broken" not in events.Tags()["images"]


class _Gated(RecipeCallback):
    """Asks for a picture at the first batch that the drawing process draws only once a file exists
    (created at batch 6), and notes at every batch whether it is still on its way."""

    def __init__(self, gate: Path) -> None:
        super().__init__()
        self.gate = gate
        self.on_its_way: list[bool] = []

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        if i == 0:
            self.log_figure(trainer, "gated", drawing_builders.after_file, str(self.gate), 5)
        if i == 6:
            self.gate.touch()
            for _ in range(3000):
                if log_writer.PICTURES_READY[0]:
                    break
                time.sleep(0.01)
        self.on_its_way.append(log_writer.pending())


def test_between_hooks_a_picture_on_its_way_is_looked_at_only_once_it_is_drawn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settles: list[int] = []
    settle = log_writer.settle
    monkeypatch.setattr(log_writer, "settle", lambda wait=False, **kw: (settles.append(len(cb.on_its_way)),
                                                                         settle(wait, **kw))[1])
    cb = _Gated(tmp_path / "gate")
    trainer = fast_trainer(tmp_path, callbacks=[cb], max_steps=10)
    trainer.fit(TinyClassifier(), loader(blobs(320)))
    assert cb.on_its_way[:6] == [True] * 6 and cb.on_its_way[8:] == [False, False]
    during = [n for n in settles if 1 <= n <= 6]
    assert during == [], settles  # nothing drawn yet: no hook looked
    assert 7 in settles  # drawn: the hook of batch 6 wrote it
    assert [i.step for i in read_events(trainer.logger.log_dir).Images("recipe._gated/gated")] == [0]  # type: ignore[union-attr]


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="process priorities are a POSIX notion")
def test_the_drawing_process_runs_below_training(drawer: Drawer) -> None:
    assert drawer.submit(drawing_builders.flat, (2, 2, 3)).result(60) is not None
    assert drawer._process is not None
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    assert os.getpriority(os.PRIO_PROCESS, drawer._process.pid) == min(mine + 10, 19)
