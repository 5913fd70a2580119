"""core.eval_mode: output comparison, where two passes part, the gap verdict."""

from __future__ import annotations

import math

import torch
from torch import nn

from recipe_callbacks.core import eval_mode as core


def test_relative_difference_against_dropout() -> None:
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    drop = nn.Dropout(0.5).train()
    assert core.relative_difference(drop(x), drop(x)) > 0.1
    drop.eval()
    assert core.relative_difference(drop(x), drop(x)) == 0.0
    nan = torch.tensor([1.0, math.nan])
    assert core.relative_difference(nan, nan.clone()) == 0.0
    assert core.relative_difference(torch.ones(2), torch.ones(3)) == math.inf


def test_gap_verdicts() -> None:
    assert core.judge_gap(0.2, 2.0, 2.0, 0.25).verdict == "eval_worse"
    assert core.judge_gap(0.01, 0.05, 2.0, 0.25).verdict == "ok"  # 5x, but a tiny absolute gap
    assert core.judge_gap(1.0, 0.5, 2.0, 0.25).verdict == "ok"  # dropout's cost in train mode
    assert core.judge_gap(1.0, math.nan, 2.0, 0.25).verdict == "eval_worse"
