"""Finding, RecipeWarning, RecipeCheckError and the three on_fail modes, through a real callback."""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import pytest
import torch

from recipe_callbacks import Finding, RecipeCallback, RecipeCheckError, RecipeWarning
from recipe_callbacks.plumbing.finding import apply_on_fail
from tests.support import TinyClassifier, blobs, fast_trainer, loader


class FailingCheck(RecipeCallback):
    """A check that fails on the first training batch (the test's planted failure)."""

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:
            self.report(trainer, "fail", "planted failure", {"observed": 3.0}, "do something")


def test_finding_round_trips_through_json_with_nan() -> None:
    f = Finding("X", "warn", "s", {"a": 1.5, "b": math.nan}, "advice")
    data = json.loads(json.dumps(f.to_dict()))
    assert data["values"] == {"a": 1.5, "b": None}
    back = Finding.from_dict(data)
    assert back.values["a"] == 1.5 and math.isnan(back.values["b"])


def test_finding_rejects_unknown_status() -> None:
    with pytest.raises(ValueError, match="status"):
        Finding("X", "bad", "s")  # type: ignore[arg-type]


def test_apply_on_fail_modes() -> None:
    fail = Finding("X", "fail", "broken", {}, "fix it")
    with pytest.raises(RecipeCheckError) as info:
        apply_on_fail(fail, "raise")
    assert info.value.finding is fail and isinstance(info.value, RuntimeError)
    with pytest.warns(RecipeWarning, match=r"\[X\] FAIL: broken Advice: fix it"):
        apply_on_fail(fail, "warn")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_on_fail(fail, "ignore")
        apply_on_fail(Finding("X", "pass", "fine"), "warn")
    assert issubclass(RecipeWarning, UserWarning)


@pytest.mark.parametrize("on_fail", ["warn", "raise", "ignore"])
def test_on_fail_in_a_real_run(tmp_path: Any, on_fail: Any) -> None:
    check = FailingCheck(on_fail=on_fail)
    trainer = fast_trainer(tmp_path, callbacks=[check], max_steps=2)
    model = TinyClassifier()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if on_fail == "raise":
            with pytest.raises(RecipeCheckError, match="planted failure"):
                trainer.fit(model, loader(blobs()))
        else:
            trainer.fit(model, loader(blobs()))
    recipe_warnings = [w for w in caught if issubclass(w.category, RecipeWarning)]
    assert len(recipe_warnings) == (1 if on_fail == "warn" else 0)
    assert [f.status for f in check.findings] == ["fail"]
    if on_fail != "raise":
        assert trainer.global_step == 2  # the run went on


def test_bad_on_fail_names_the_argument() -> None:
    with pytest.raises(ValueError, match=r"FailingCheck\(on_fail='loud'\): on_fail must be one of"):
        FailingCheck(on_fail="loud")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"input_key"):
        FailingCheck(input_key=3)  # type: ignore[arg-type]


def test_keyed_findings_replace_and_survive_state_dict() -> None:
    check = FailingCheck(on_fail="ignore")
    check.report(None, "warn", "epoch 0", key="val")
    check.report(None, "pass", "epoch 1", key="val")
    check.report(None, "pass", "other", key="other")
    assert [f.summary for f in check.findings] == ["epoch 1", "other"]
    fresh = FailingCheck()
    state = check.state_dict()
    torch.save(state, "/dev/null")  # tensors and primitives only
    fresh.load_state_dict(state)
    assert fresh.findings == check.findings
