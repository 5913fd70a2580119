"""core.run_compare: which recorded difference explains two runs that differ, and the noise rule
for validation figures (overlapping intervals are no evidence)."""

from __future__ import annotations

from typing import Any

import pytest

from recipe_callbacks.core.run_compare import Figure, compare_figure, compare_runs, explain, first_divergence

RUN: dict[str, Any] = {"seed": 0, "fingerprints": {"weights": "w0", "batch": "b0"}, "deterministic": True}
SAME = first_divergence([0, 1], [1.0, 0.5], [0, 1], [1.0, 0.5])
DIFF = first_divergence([0, 1], [1.0, 0.5], [0, 1], [1.0, 0.25])


@pytest.mark.parametrize(
    ("b", "first_word"),
    [
        ({"seed": 1}, "seed:"),
        ({"fingerprints": {"weights": "w1", "batch": "b0"}}, "weights:"),
        ({"fingerprints": {"weights": "w0", "batch": "b1"}}, "data order:"),
        ({"deterministic": False}, "nondeterministic kernels:"),
        ({}, "not recorded:"),
    ],
)
def test_explain_names_the_recorded_cause(b: dict[str, Any], first_word: str) -> None:
    reasons = explain(RUN, {**RUN, **b}, DIFF, {}, {})
    assert reasons[0].startswith(first_word), reasons


def test_identical_runs_need_no_explanation() -> None:
    assert explain(RUN, dict(RUN), SAME, {}, {}) == []
    assert SAME.identical and SAME.text() == "identical bit for bit over 2 batches"


def test_first_divergence_against_a_direct_scan() -> None:
    a = [2.0, 1.5, 1.25, 1.0, 0.9]
    b = [2.0, 1.5, 1.2500000000000002, 1.0, 0.8]
    d = first_divergence(range(5), a, range(5), b)
    assert (d.first_index, d.first_step) == (2, 2)
    assert d.abs_diff == abs(a[2] - b[2]) and d.max_abs_diff == pytest.approx(0.1)
    shorter = first_divergence(range(5), a, range(3), a[:3])
    assert not shorter.identical and shorter.first_index is None and "lengths differ" in shorter.text()


@pytest.mark.parametrize(
    ("name", "a", "b", "verdict"),
    [
        ("accuracy", (0.80, 0.02), (0.90, 0.02), "better"),
        ("accuracy", (0.90, 0.02), (0.80, 0.02), "worse"),
        ("loss", (0.50, 0.02), (0.40, 0.02), "better"),  # smaller is better for a loss
        ("loss", (0.50, 0.06), (0.40, 0.06), "no evidence"),  # intervals overlap
        ("loss", (0.50, 0.06), (0.50, 0.06), "equal"),
    ],
)
def test_figures_are_judged_against_the_noise(
    name: str, a: tuple[float, float], b: tuple[float, float], verdict: str
) -> None:
    assert compare_figure(Figure("val", name, *a), Figure("val", name, *b)).verdict == verdict


def test_compare_runs_pairs_findings_figures_and_hparams() -> None:
    def report(status: str, acc: float, lr: float) -> dict[str, Any]:
        return {
            "findings": [
                {"check": "LossDecreaseCheck", "status": status, "summary": "s"},
                {
                    "check": "FullEvalSet",
                    "status": "pass",
                    "summary": "val loss ...",
                    "values": {"loss": 1 - acc, "loss_halfwidth": 0.01, "accuracy": acc, "accuracy_halfwidth": 0.01},
                },
            ],
            "versions": {"torch": "2.13.0"},
            "run": {**RUN, "hparams": {"lr": lr}, "train_loss": {"steps": [0], "values": [1.0]}},
        }

    c = compare_runs("a", report("pass", 0.8, 0.1), "b", report("fail", 0.9, 0.3))
    assert [(x.check, x.status_a, x.status_b) for x in c.changes] == [("LossDecreaseCheck", "pass", "fail")]
    assert c.hparams == {"lr": (0.1, 0.3)}
    main = c.main_figure()
    assert main is not None and (main.name, main.verdict) == ("accuracy", "better")
    assert c.identical  # same fingerprints and losses; the hyperparameters are judged separately
