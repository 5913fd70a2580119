"""examples/planted_bugs.py: every planted bug of docs/recipe.md is caught by the check meant for it,
and the healthy models pass the same checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from examples import planted_bugs
from recipe_callbacks import Finding
from recipe_callbacks.plumbing.callback_base import snake_case
from tests.support import read_events

# The bugs docs/recipe.md names, each with the check that must catch it.
EXPECTED = {
    "one_class_labels": "DataInspector",
    "train_val_duplicates": "DataInspector",
    "unseeded_init": "SeedEverything",
    "limit_val_batches": "FullEvalSet",
    "val_drop_last": "FullEvalSet",
    "mean_of_batch_means": "FullEvalSet",
    "large_final_weights": "InitLossCheck",
    "default_bias_imbalanced": "InitLossCheck",
    "forward_ignores_x": "InputIndependentBaseline",
    "pipeline_feeds_zeros": "InputIndependentBaseline",
    "frozen_layers": "OverfitOneBatch",
    "lr_zero": "OverfitOneBatch",
    "wrong_sign_loss": "OverfitOneBatch",
    "flat_loss": "LossDecreaseCheck",
    "raw_pixels": "InputVisualizer",
    "nan_in_batch": "InputVisualizer",
    "lr_too_high": "PredictionDynamicsLogger",
    "reshape_mixes_batch": "BatchIndependenceCheck",
    "attention_off_by_one": "CausalityCheck",
    "decay_in_early_stage": "NoLRDecayWarning",
    "cosine_tmax_epochs": "NoLRDecayWarning",
    "interval_wrong_level": "NoLRDecayWarning",
    "onecycle_total_steps": "NoLRDecayWarning",
    "lr_near_zero_early": "NoLRDecayWarning",
    "adam_lr_far": "NoLRDecayWarning",
    "noise_filters": "FirstLayerFilterViz",
    "dead_relus": "UpdateRatioMonitor",
    "frozen_head_ratio": "UpdateRatioMonitor",
    "unused_branch": "GradientFlowCheck",
    "detached_features": "GradientFlowCheck",
    "grad_never_zeroed": "GradientFlowCheck",
    "dropout_in_eval": "EvalModeCheck",
    "batchnorm_momentum_zero": "EvalModeCheck",
    "double_softmax": "LossCompatibilityCheck",
    "double_sigmoid": "LossCompatibilityCheck",
    "broadcast_mse": "LossCompatibilityCheck",
    "one_hot_mse": "LossCompatibilityCheck",
    "near_duplicates_in_val": "LeakageCheck",
    "val_one_repeated_sample": "LeakageCheck",
    "ddp_not_sharded_and_drift": "DistributedConsistencyCheck",
}
# A planted bug no check can flag from outside the user's code: the exact figure must expose it.
SHOWN_ONLY = {"mean_of_batch_means"}


def test_every_planted_bug_is_caught_and_every_control_passes(tmp_path: Path) -> None:
    # One long run (about 10 s on one core): every scenario once.
    results = planted_bugs.run_scenarios(log_dir=str(tmp_path))
    by_name = {r.name: r for r in results}
    assert set(EXPECTED) <= set(by_name)

    for name, check in EXPECTED.items():
        r = by_name[name]
        assert r.planted and r.check == check, r
        if name in SHOWN_ONLY:
            # FullEvalSet cannot see how the user averages; its exact figure lies outside the
            # interval of the batch-mean figure.
            assert r.shown is True, r
            assert r.statuses and not r.caught, r
        else:
            assert r.caught, f"{name}: {check} reported {r.statuses}: {r.summary}"
            assert r.status in ("warn", "fail"), r
        assert r.ok, r
        # What the check reported reached TensorBoard under its own tags.
        tags = read_events(tmp_path / name).Tags()
        logged = [t for kind in ("scalars", "images", "tensors") for t in tags.get(kind, [])]
        assert any(t.startswith(f"recipe.{snake_case(check)}/") for t in logged), (name, logged)

    controls = [r for r in results if not r.planted]
    checks_with_control = {r.check for r in controls}
    # Every check with a planted bug has a healthy control.
    assert set(EXPECTED.values()) <= checks_with_control
    for r in controls:
        assert "pass" in r.statuses and not r.caught, f"{r.name}: {r.check} reported {r.statuses}: {r.summary}"

    seed = by_name["unseeded_init"]
    assert "DIFFERENT" in seed.summary  # the two unseeded runs start from different weights
    assert "(same)" in by_name["control_seed"].summary

    table = planted_bugs.format_table(results)
    assert all(r.name in table for r in results)
    assert "MISSED" not in table and "NOISY" not in table


def test_main_lists_runs_one_and_exits_zero_when_caught(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert planted_bugs.main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in EXPECTED)

    assert planted_bugs.main(["--only", "lr_zero", "--log-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "lr_zero" in out and "CAUGHT fail" in out and "1 of 1 as expected;" in out
    assert (tmp_path / "lr_zero").is_dir()


def test_unknown_scenario_is_named() -> None:
    with pytest.raises(ValueError, match="no_such_bug"):
        planted_bugs.run_scenarios(["no_such_bug"])
    with pytest.raises(SystemExit):
        planted_bugs.main(["--only", "no_such_bug"])


def test_main_exits_one_when_a_bug_is_missed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A planted scenario whose check reports only a pass: the table says MISSED and the exit code is 1.
    silent = planted_bugs.Scenario(
        "silent_bug", "a bug nothing reports", "2h overfit", "OverfitOneBatch",
        lambda ctx: planted_bugs.Outcome([Finding("OverfitOneBatch", "pass", "memorised")]),
    )
    monkeypatch.setattr(planted_bugs, "SCENARIOS", [silent])
    assert planted_bugs.main(["--only", "silent_bug"]) == 1
    out = capsys.readouterr().out
    assert "MISSED pass" in out and "not as expected: silent_bug" in out
