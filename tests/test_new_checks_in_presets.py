"""The new checks inside the skeleton preset, beside every other check, on healthy models of the
common families: none of them warns or fails (the other checks' verdicts are theirs to test)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from recipe_callbacks import presets
from recipe_callbacks.plumbing.callback_base import RecipeCallback
from tests.families import healthy_runs
from tests.support import fast_trainer

NEW = {"GradientFlowCheck", "EvalModeCheck", "LossCompatibilityCheck"}


@pytest.mark.parametrize("family", ["lstm_lm", "gpt", "batchnorm_cnn", "tabular_regression"])
def test_new_checks_pass_healthy_families_in_the_skeleton_preset(family: str, tmp_path: Path) -> None:
    model, data = healthy_runs()[family]
    callbacks = presets.callbacks("skeleton", on_fail="ignore")
    trainer = fast_trainer(tmp_path, callbacks=callbacks, max_epochs=2, limit_train_batches=20, limit_val_batches=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, data)
    mine = [cb for cb in callbacks if isinstance(cb, RecipeCallback) and type(cb).__name__ in NEW]
    assert {type(cb).__name__ for cb in mine} == NEW
    for cb in mine:
        assert cb.findings, type(cb).__name__
        for f in cb.findings:
            assert f.status == "pass", f
