"""GradientFlowCheck, EvalModeCheck and LossCompatibilityCheck under ddp_spawn with 2 CPU processes:
no hang, no crash, rank 0's report carries the verdicts of a healthy and of a planted model."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader

from examples.digits import digits_datasets
from recipe_callbacks import EvalModeCheck, GradientFlowCheck, LossCompatibilityCheck, RecipeReport, RecipeWarning
from tests.families import BatchNormCNN
from tests.support import fast_trainer


class SoftmaxBatchNormCNN(BatchNormCNN):
    """Planted: probabilities out of forward into cross-entropy, and F.dropout on in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(F.dropout(self.features(x).flatten(1), 0.3)), dim=1)


def statuses(model: Any, root: Path) -> dict[str, list[str]]:
    callbacks = [GradientFlowCheck(), EvalModeCheck(), LossCompatibilityCheck(), RecipeReport(print_report=False)]
    trainer = fast_trainer(root, accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=2,
                           limit_train_batches=16, callbacks=callbacks)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecipeWarning)
        warnings.simplefilter("ignore", UserWarning)
        trainer.fit(model, DataLoader(digits_datasets()[0], batch_size=32, shuffle=True))
    report = json.loads((root / "run" / "recipe_report.json").read_text())
    out: dict[str, list[str]] = {}
    for finding in report["findings"]:
        out.setdefault(finding["check"], []).append(finding["status"])
    return out


@pytest.mark.parametrize(("model", "expected"), [
    (BatchNormCNN, {"GradientFlowCheck": ["pass"], "EvalModeCheck": ["pass", "pass"],
                    "LossCompatibilityCheck": ["pass"]}),
    (SoftmaxBatchNormCNN, {"GradientFlowCheck": ["pass"], "EvalModeCheck": ["fail", "pass"],
                           "LossCompatibilityCheck": ["fail"]}),
])
def test_verdicts_under_ddp_spawn(model: type[BatchNormCNN], expected: dict[str, list[str]], tmp_path: Path) -> None:
    assert statuses(model(), tmp_path) == expected
