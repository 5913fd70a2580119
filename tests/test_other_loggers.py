"""Every logger users use gets everything: W&B (offline) and MLflow (local file store) for real,
several loggers at once, and no run overwriting another's report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, TensorBoardLogger, WandbLogger
from PIL import Image

from recipe_callbacks import RecipeCallback, RecipeReport
from tests.support import TinyClassifier, blobs, fast_trainer, loader, read_events, text_values

PICTURE = np.zeros((6, 10, 3), dtype=np.uint8)
PICTURE[:, :5, 0] = 255  # left half red


class Everything(RecipeCallback):
    """Logs one picture, text and histogram, and reports a warn with advice, on the first batch."""

    def __init__(self, label: str = "first") -> None:
        super().__init__(on_fail="ignore")
        self.label = label

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self.log_image(trainer, "picture", PICTURE)
            self.log_text(trainer, "note", f"**{self.label}**")
            self.log_histogram(trainer, "weights", torch.arange(10.0))
            self.report(trainer, "warn", f"run {self.label}", {"value": 3.0}, "look at the picture")


def _fit(tmp_path: Path, logger: Any, label: str = "first") -> Any:
    trainer = fast_trainer(tmp_path, logger=logger, callbacks=[Everything(label), RecipeReport(False)], max_steps=2)
    trainer.fit(TinyClassifier(), loader(blobs()))
    return trainer


def _check_report_dir(directory: Path, label: str) -> None:
    assert f"run {label}" in (directory / "recipe_report.md").read_text()
    data = json.loads((directory / "recipe_report.json").read_text())
    assert data["findings"][0]["summary"] == f"run {label}"
    page = (directory / "recipe_report.html").read_text()
    assert f"run {label}" in page and "data:image/png;base64," in page


def test_wandb_offline_run_holds_pictures_and_report(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="recipe")
    try:
        trainer = _fit(tmp_path, logger)
        files = Path(logger.experiment.dir)
    finally:
        wandb.finish()
    run_dir = files.parent
    assert run_dir.parent == tmp_path / "wandb" and run_dir.name.startswith("offline-run-")
    # pictures through wandb.Image: PNGs in the run's media, the same pixels
    pngs = list((files / "media" / "images").rglob("*.png"))
    pictures = [p for p in pngs if "picture" in p.name]
    assert pictures and np.array_equal(np.asarray(Image.open(pictures[0]).convert("RGB")), PICTURE)
    # text and the report as HTML media of the run
    html_media = [p.read_text() for p in (files / "media" / "html").rglob("*.html")]
    assert any("<strong>first</strong>" in h for h in html_media)
    assert any("Recipe report" in h and "run first" in h for h in html_media)
    # the report files among the run's own files (uploaded with it), not in save_dir
    _check_report_dir(files, "first")
    assert not (tmp_path / "recipe_report.md").exists()
    assert not (tmp_path / "recipe").exists()
    assert Path(trainer.log_dir) != tmp_path / "recipe"


def _mlflow_artifacts(logger: MLFlowLogger) -> Path:
    uri = logger.experiment.get_run(logger.run_id).info.artifact_uri
    return Path(uri.removeprefix("file://"))


@pytest.fixture
def _file_store(monkeypatch: pytest.MonkeyPatch) -> None:
    # MLflow 3 keeps its local file store behind this switch (the store most users start with)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")


@pytest.mark.usefixtures("_file_store")
def test_mlflow_runs_hold_their_own_artifacts(tmp_path: Path) -> None:
    store = f"file://{tmp_path / 'mlruns'}"
    first = MLFlowLogger(experiment_name="a", tracking_uri=store)
    second = MLFlowLogger(experiment_name="b", tracking_uri=store)
    _fit(tmp_path, first, "first")
    _fit(tmp_path, second, "second")
    for logger, label in ((first, "first"), (second, "second")):
        artifacts = _mlflow_artifacts(logger)
        assert logger.run_id in str(artifacts)
        _check_report_dir(artifacts, label)
        (png,) = (artifacts / "recipe" / "everything" / "picture").glob("*.png")
        assert np.array_equal(np.asarray(Image.open(png).convert("RGB")), PICTURE)
        (note,) = (artifacts / "recipe" / "everything" / "note").glob("*.md")
        assert note.read_text() == f"**{label}**"
        assert list((artifacts / "recipe" / "everything" / "weights").glob("*.png"))
    # nothing shared by the two runs: no report in the store's root
    assert not list((tmp_path / "mlruns").glob("recipe_report.*"))


@pytest.mark.usefixtures("_file_store")
def test_several_loggers_each_get_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tb = TensorBoardLogger(str(tmp_path), name="tb")
    csv_logger = CSVLogger(str(tmp_path), name="csv")
    mlflow_logger = MLFlowLogger(experiment_name="multi", tracking_uri=f"file://{tmp_path / 'mlruns'}")
    wandb_logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="recipe")
    try:
        _fit(tmp_path, [tb, csv_logger, mlflow_logger, wandb_logger])
        files = Path(wandb_logger.experiment.dir)
    finally:
        wandb.finish()
    ea = read_events(tb.log_dir)
    assert len(ea.Images("recipe.everything/picture")) == 1
    assert text_values(ea, "recipe.everything/note") == ["**first**"]
    _check_report_dir(Path(tb.log_dir), "first")
    _check_report_dir(Path(csv_logger.log_dir), "first")
    assert list((Path(csv_logger.log_dir) / "recipe" / "everything" / "picture").glob("*.png"))
    _check_report_dir(_mlflow_artifacts(mlflow_logger), "first")
    _check_report_dir(files, "first")
    assert list((files / "media" / "images").rglob("*.png"))


def test_two_csv_runs_do_not_overwrite_each_other(tmp_path: Path) -> None:
    a = _fit(tmp_path, CSVLogger(str(tmp_path), name="csv"), "first")
    b = _fit(tmp_path, CSVLogger(str(tmp_path), name="csv"), "second")
    assert a.log_dir != b.log_dir
    _check_report_dir(Path(a.log_dir), "first")
    _check_report_dir(Path(b.log_dir), "second")


@pytest.mark.usefixtures("_file_store")
def test_a_failing_logger_service_costs_a_warning_not_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    def out_of_reach(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("tracking server out of reach")

    monkeypatch.setattr(MlflowClient, "log_image", out_of_reach)
    monkeypatch.setattr(MlflowClient, "log_artifact", out_of_reach)
    logger = MLFlowLogger(experiment_name="down", tracking_uri=f"file://{tmp_path / 'mlruns'}")
    with pytest.warns(UserWarning, match=r"MLFlowLogger could not take the pictures \(ConnectionError"):
        trainer = _fit(tmp_path, logger)
    assert trainer.global_step == 2  # the run trained to its end
