"""Lightning's smoke-test and partial-run modes under the presets: a healthy model gets no warn or fail.

``fast_dev_run``, ``overfit_batches`` and ``limit_*_batches`` are what the user asked for; a check
that cannot judge such a run says so (a ``skip`` naming the mode), it never warns about it or advises
against it. The one warning left on purpose is FullEvalSet's under ``limit_val_batches`` below 1: that
partial evaluation is the planted bug it exists to catch (recipe step 2b, tests/test_planted_bugs.py).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
from lightning.pytorch.loggers import TensorBoardLogger

from recipe_callbacks import RecipeWarning, presets
from recipe_callbacks.plumbing.callback_base import RecipeCallback
from tests.support import TinyClassifier, blobs, loader

MODES: dict[str, dict[str, Any]] = {
    "fast_dev_run": {"fast_dev_run": True},
    "overfit_batches": {"overfit_batches": 1, "max_epochs": 30},
    "limit_train_batches": {"limit_train_batches": 3, "max_epochs": 3},
    "limit_val_batches": {"limit_val_batches": 2, "max_epochs": 2},
}


def _model(name: str) -> tuple[pl.LightningModule, Any, Any]:
    if name == "tiny":
        return TinyClassifier(), loader(blobs(128), batch_size=16), loader(blobs(64, seed=1), batch_size=16)
    pytest.importorskip("transformers")  # tests.zoo imports it
    from tests.zoo.families import build

    case = build(name)
    train, val = case.loaders()
    return case.module, train, val


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("preset", ["full", "skeleton"])
@pytest.mark.parametrize("model_name", ["tiny", "digits_cnn"])
def test_no_alarm_under_lightning_modes(tmp_path: Path, model_name: str, preset: str, mode: str) -> None:
    kwargs = presets.trainer_kwargs(preset)  # seeds before the model is built
    for cb in kwargs["callbacks"]:
        if type(cb).__name__ == "RecipeReport":
            cb.print_report = False
    model, train, val = _model(model_name)
    trainer = pl.Trainer(
        **kwargs, **MODES[mode], accelerator="cpu", devices=1, default_root_dir=str(tmp_path),
        logger=TensorBoardLogger(str(tmp_path), name="", version="run"), enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False,
    )
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer.fit(model, train, val)
    checks = [cb for cb in trainer.callbacks if isinstance(cb, RecipeCallback)]  # type: ignore[attr-defined]
    alarms = {}
    for cb in checks:
        if type(cb).__name__ == "RecipeReport":
            continue
        assert cb.findings, f"{type(cb).__name__} left no verdict under {mode}"
        for f in cb.findings:
            partial_eval = f.check == "FullEvalSet" and "limit_val_batches=2 evaluated" in f.summary
            if f.status in ("warn", "fail") and not partial_eval:
                alarms[f.check] = f.message()
            if mode == "fast_dev_run" and f.check == "LossDecreaseCheck":
                assert f.status == "skip" and "fast_dev_run=True" in f.summary and not f.advice, f.message()
    assert alarms == {}
    expected = 1 if mode == "limit_val_batches" else 0  # FullEvalSet's planted-bug warning only
    recipe_warnings = [str(w.message) for w in record if issubclass(w.category, RecipeWarning)]
    assert len(recipe_warnings) == expected, recipe_warnings
