"""Sharded and large-scale strategies: detection with Lightning's real strategy classes, the
behaviour of every callback when the strategy shards the model, and a full preset under DDP."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from lightning.pytorch.strategies import (
    DDPStrategy,
    DeepSpeedStrategy,
    FSDPStrategy,
    ModelParallelStrategy,
    SingleDeviceStrategy,
)

import recipe_callbacks
from recipe_callbacks import RecipeCallback, presets
from recipe_callbacks.plumbing.callback_base import sharded_strategy
from tests.support import TinyClassifier, blobs, fast_trainer, loader


def test_sharded_strategies_are_recognised_by_their_real_classes() -> None:
    # DeepSpeedStrategy's constructor needs the deepspeed package; detection reads only the class.
    deepspeed = DeepSpeedStrategy.__new__(DeepSpeedStrategy)
    strategies = (FSDPStrategy(), deepspeed, ModelParallelStrategy())
    found = [sharded_strategy(SimpleNamespace(strategy=s)) for s in strategies]
    assert found == ["FSDPStrategy", "DeepSpeedStrategy", "ModelParallelStrategy"]

    class MyFSDP(FSDPStrategy):
        pass

    assert sharded_strategy(SimpleNamespace(strategy=MyFSDP())) == "MyFSDP"
    assert sharded_strategy(SimpleNamespace(strategy=DDPStrategy())) is None
    assert sharded_strategy(SimpleNamespace(strategy=SingleDeviceStrategy("cpu"))) is None


# What each callback does when the strategy shards the model: skip (with the reason) or run.
SKIPS = {
    "InputIndependentBaseline", "OverfitOneBatch", "BatchIndependenceCheck", "CausalityCheck",
    "PredictionDynamicsLogger", "FirstLayerFilterViz", "UpdateRatioMonitor",
}


def _fit(tmp_path: Path, callbacks: list[Any]) -> None:
    trainer = fast_trainer(tmp_path, max_epochs=2, callbacks=callbacks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(TinyClassifier(), loader(blobs(64), shuffle=True), loader(blobs(32, seed=1)))


def test_under_a_sharded_strategy_each_callback_runs_or_skips_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FSDP cannot run on this machine's CPU: the Trainer trains on one device while the callbacks
    # are told the strategy is FSDPStrategy, through the one function they all ask.
    monkeypatch.setattr(recipe_callbacks.plumbing.callback_base, "sharded_strategy", lambda trainer: "FSDPStrategy")
    monkeypatch.setattr(recipe_callbacks.data_inspector, "sharded_strategy", lambda trainer: "FSDPStrategy")
    callbacks = presets.callbacks("full", every_n_steps=2, InitLossCheck={"fix_bias": True})
    checks = [cb for cb in callbacks if isinstance(cb, RecipeCallback)]
    _fit(tmp_path / "sharded", callbacks)
    for cb in checks:
        sharded = [f for f in cb.findings if "FSDPStrategy" in f.summary]
        expected_skip = type(cb).__name__ in SKIPS or getattr(cb, "fix_bias", False)
        if expected_skip:
            assert [f.status for f in sharded] == ["skip"], type(cb).__name__
            assert [f.status for f in cb.findings] == ["skip"], "its hooks must do nothing else"
        elif type(cb).__name__ == "DataInspector":  # counts labels and duplicates; no end-of-fit pass
            assert [f.status for f in sharded] == ["skip"] and len(cb.findings) == 3
        else:
            assert not sharded, type(cb).__name__
    report = json.loads((tmp_path / "sharded" / "run" / "recipe_report.json").read_text())
    assert any("FSDPStrategy" in f["summary"] for f in report["findings"])

    # A later fit on a strategy that does not shard switches the hooks on again.
    monitor = next(cb for cb in checks if isinstance(cb, recipe_callbacks.UpdateRatioMonitor))
    assert "on_train_batch_end" in vars(monitor)  # switched off for the sharded fit
    monkeypatch.setattr(recipe_callbacks.plumbing.callback_base, "sharded_strategy", lambda trainer: None)
    _fit(tmp_path / "plain", [monitor])
    assert "on_train_batch_end" not in vars(monitor)
    assert {f.status for f in monitor.findings if "Strategy" not in f.summary} == {"pass"}


def test_full_preset_under_ddp_spawn_two_processes(tmp_path: Path) -> None:
    trainer = fast_trainer(
        tmp_path, max_epochs=2, accelerator="cpu", devices=2, strategy="ddp_spawn",
        callbacks=presets.callbacks("full", every_n_steps=2, UpdateRatioMonitor={"patience": 2}),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 4 steps per epoch on each of the 2 processes
        trainer.fit(TinyClassifier(), loader(blobs(128), shuffle=True), loader(blobs(32, seed=1)))
    report = json.loads((tmp_path / "run" / "recipe_report.json").read_text())
    statuses = {f["check"]: f["status"] for f in report["findings"]}
    assert not any("DDPStrategy" in f["summary"] for f in report["findings"])  # DDP does not shard: no skip
    assert {name for name, status in statuses.items() if status in ("pass", "warn", "fail")} >= {
        "InitLossCheck", "FullEvalSet", "LossDecreaseCheck", "UpdateRatioMonitor", "DataInspector",
    }
