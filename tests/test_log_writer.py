"""Scalars, pictures, text and histograms with every logger set-up, read back from disk."""

from __future__ import annotations

import csv
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from PIL import Image

from recipe_callbacks import RecipeCallback
from recipe_callbacks.core.pictures import FIGURE_SHAPE, line_chart
from recipe_callbacks.plumbing import log_writer
from tests.support import TinyClassifier, blobs, fast_trainer, loader, read_events, scalar_values, text_values

PICTURE = np.zeros((6, 10, 3), dtype=np.uint8)
PICTURE[:, :5, 0] = 255  # left half red


class Everything(RecipeCallback):
    """Logs one of each kind on the first two training batches."""

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx < 2:
            self.log_scalars(trainer, {"value": 1.0 + batch_idx})
            self.log_image(trainer, "picture", PICTURE)
            self.log_text(trainer, "note", f"**batch {batch_idx}**")
            self.log_histogram(trainer, "weights", torch.arange(10.0))
            self.log_figure(trainer, "chart", line_chart({"loss": [1.0, 0.5]}, ylabel="loss"))


def _fit(tmp_path: Path, logger: Any) -> Any:
    trainer = fast_trainer(tmp_path, logger=logger, callbacks=[Everything()], max_steps=2)
    trainer.fit(TinyClassifier(), loader(blobs()))
    return trainer


def _check_tensorboard(log_dir: Path | str) -> None:
    ea = read_events(log_dir)
    assert scalar_values(ea, "recipe.everything/value") == [1.0, 2.0]
    assert [e.step for e in ea.Scalars("recipe.everything/value")] == [1, 2]  # global step after each optimizer step
    images = ea.Images("recipe.everything/picture")
    assert len(images) == 2 and (images[0].width, images[0].height) == (10, 6)
    assert text_values(ea, "recipe.everything/note") == ["**batch 0**", "**batch 1**"]
    assert len(ea.Histograms("recipe.everything/weights")) == 2
    charts = ea.Images("recipe.everything/chart")  # a matplotlib figure, rendered once to a picture
    assert len(charts) == 2 and (charts[0].height, charts[0].width, 3) == FIGURE_SHAPE


def _check_csv(log_dir: Path | str) -> None:
    with open(Path(log_dir) / "metrics.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r.get("recipe.everything/value")]
    assert [float(r["recipe.everything/value"]) for r in rows] == [1.0, 2.0]


def _check_files(recipe_dir: Path) -> None:
    pngs = sorted((recipe_dir / "everything" / "picture").glob("*.png"))
    assert [p.name for p in pngs] == ["step_0000001.png", "step_0000002.png"]
    assert np.array_equal(np.asarray(Image.open(pngs[0]).convert("RGB")), PICTURE)
    notes = sorted((recipe_dir / "everything" / "note").glob("*.md"))
    assert notes[1].read_text() == "**batch 1**"
    assert len(list((recipe_dir / "everything" / "weights").glob("*.png"))) == 2
    charts = sorted((recipe_dir / "everything" / "chart").glob("*.png"))
    assert len(charts) == 2 and Image.open(charts[0]).size == FIGURE_SHAPE[1::-1]


def test_tensorboard_logger(tmp_path: Path) -> None:
    trainer = _fit(tmp_path, "tb")
    _check_tensorboard(trainer.logger.log_dir)
    assert not (Path(trainer.logger.log_dir) / "recipe").exists()


def test_csv_logger_falls_back_to_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    messages: list[str] = []
    monkeypatch.setattr("recipe_callbacks.plumbing.log_writer.rank_zero_info", messages.append)
    trainer = _fit(tmp_path, CSVLogger(str(tmp_path), name="csv"))
    _check_csv(trainer.logger.log_dir)
    _check_files(Path(trainer.logger.log_dir) / "recipe")
    assert sum("loggers cannot hold go to" in m for m in messages) == 1


def test_both_loggers(tmp_path: Path) -> None:
    tb = TensorBoardLogger(str(tmp_path), name="tb")
    csv_logger = CSVLogger(str(tmp_path), name="csv")
    _fit(tmp_path, [tb, csv_logger])
    _check_tensorboard(tb.log_dir)
    _check_csv(csv_logger.log_dir)
    _check_files(Path(csv_logger.log_dir) / "recipe")  # each logger gets everything: the CSV run its files
    assert not (Path(tb.log_dir) / "recipe").exists()


def test_no_logger_writes_files_to_default_root_dir(tmp_path: Path) -> None:
    _fit(tmp_path, False)
    _check_files(tmp_path / "recipe")


def test_only_rank_zero_writes_under_ddp(tmp_path: Path) -> None:
    logger = TensorBoardLogger(str(tmp_path), name="", version="run")
    trainer = fast_trainer(
        tmp_path, logger=logger, callbacks=[Everything()], max_steps=2, devices=2, strategy="ddp_spawn"
    )
    trainer.fit(TinyClassifier(), loader(blobs()))
    event_files = list((tmp_path / "run").glob("events.out.tfevents.*"))
    assert len(event_files) == 1
    _check_tensorboard(tmp_path / "run")


class ThreeScalars(RecipeCallback):
    """Logs three scalars in one call on each of the first two training batches."""

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx < 2:
            self.log_scalars(trainer, {"a": 1.0 + batch_idx, "b": 0.25, "c": -3.0})


def _events_with(log_dir: str, prefix: str) -> list[Any]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    return [
        event
        for path in sorted(Path(log_dir).glob("events.out.tfevents.*"))
        for event in EventFileLoader(str(path)).Load()
        if any(v.tag.startswith(prefix) for v in event.summary.value)
    ]


@pytest.mark.parametrize("prefix", ["", "run"])
def test_the_scalars_of_one_call_are_one_tensorboard_event_with_the_same_tags_and_values(
    tmp_path: Path, prefix: str
) -> None:
    logger = TensorBoardLogger(str(tmp_path), name="tb", prefix=prefix)
    trainer = fast_trainer(tmp_path, logger=logger, callbacks=[ThreeScalars()], max_steps=2)
    trainer.fit(TinyClassifier(), loader(blobs()))
    logger.experiment.flush()
    tag = f"{prefix}-recipe.three_scalars" if prefix else "recipe.three_scalars"
    ea = read_events(logger.log_dir)
    assert scalar_values(ea, f"{tag}/a") == [1.0, 2.0] and scalar_values(ea, f"{tag}/c") == [-3.0, -3.0]
    assert [e.step for e in ea.Scalars(f"{tag}/b")] == [1, 2]
    events = _events_with(logger.log_dir, tag)
    assert [(e.step, sorted(v.tag for v in e.summary.value)) for e in events] == [
        (s, [f"{tag}/a", f"{tag}/b", f"{tag}/c"]) for s in (1, 2)
    ]  # was one event per scalar
    assert "add_scalar" not in vars(logger.experiment)  # the writer is left as it was


class Renaming(TensorBoardLogger):
    """A user's logger that renames what it logs: its own way is kept for every call."""

    def log_metrics(self, metrics: Any, step: Any = None) -> None:
        super().log_metrics({f"{k}_mine": v for k, v in metrics.items()}, step)


def test_a_logger_with_its_own_log_metrics_keeps_its_tags(tmp_path: Path) -> None:
    logger = Renaming(str(tmp_path), name="tb")
    trainer = fast_trainer(tmp_path, logger=logger, callbacks=[ThreeScalars()], max_steps=2)
    trainer.fit(TinyClassifier(), loader(blobs()))
    logger.experiment.flush()
    ea = read_events(logger.log_dir)
    assert scalar_values(ea, "recipe.three_scalars/a_mine") == [1.0, 2.0]
    assert [len(e.summary.value) for e in _events_with(logger.log_dir, "recipe.three_scalars")] == [3, 3]


class EveryBatch(RecipeCallback):
    """Logs one scalar on every training batch and notes how many events were held after each."""

    def __init__(self) -> None:
        super().__init__()
        self.held: list[int] = []

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.log_scalars(trainer, {"value": float(batch_idx)})
        self.held.append(len(log_writer._HELD))


def test_scalar_events_are_held_and_written_in_runs_every_one_on_disk_at_the_end_of_the_fit(tmp_path: Path) -> None:
    cb = EveryBatch()
    trainer = fast_trainer(tmp_path, callbacks=[cb], max_steps=40)
    trainer.fit(TinyClassifier(), loader(blobs(n=1280), batch_size=32))
    # the first call writes through log_metrics (the prefix learned); then runs of HELD_EVENTS
    assert max(cb.held) == log_writer.HELD_EVENTS - 1 and cb.held.count(0) >= 2
    assert not log_writer._HELD
    ea = read_events(tmp_path / "run")
    assert [(e.step, e.value) for e in ea.Scalars("recipe.every_batch/value")] == [(s + 1, float(s)) for s in range(40)]


class Sleepy(pl.Callback):
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        time.sleep(0.03)


def test_held_scalar_events_wait_at_most_held_seconds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(log_writer, "HELD_SECONDS", 0.05)
    cb = EveryBatch()
    trainer = fast_trainer(tmp_path, callbacks=[Sleepy(), cb], max_steps=12)
    trainer.fit(TinyClassifier(), loader(blobs(n=1280), batch_size=32))
    # a step takes 30 ms: an event is written within two steps (held by count alone, 11 would wait)
    assert len(cb.held) == 12 and max(cb.held) <= 2
    ea = read_events(tmp_path / "run")
    assert [e.step for e in ea.Scalars("recipe.every_batch/value")] == list(range(1, 13))


class FailsAtBatch(TinyClassifier):
    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if batch_idx == 5:
            raise RuntimeError("the user's step failed")
        return super().training_step(batch, batch_idx)


def test_held_scalar_events_are_written_when_the_fit_fails(tmp_path: Path) -> None:
    cb = EveryBatch()
    trainer = fast_trainer(tmp_path, callbacks=[cb], max_steps=40)
    with pytest.raises(RuntimeError, match="the user's step failed"):
        trainer.fit(FailsAtBatch(), loader(blobs(n=1280), batch_size=32))
    assert max(cb.held) >= 3 and not log_writer._HELD  # held during the fit, written at its failure
    ea = read_events(tmp_path / "run")
    assert [e.step for e in ea.Scalars("recipe.every_batch/value")] == [1, 2, 3, 4, 5]
