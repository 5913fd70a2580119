"""One-off checks say on rank 0 when they start and what they cost, with a progress bar for a long
one, through Lightning's rank-zero logger (so one logging level silences them)."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from recipe_callbacks.plumbing.callback_base import FirstBatchCheck
from recipe_callbacks.plumbing.observe import detached_copy
from tests.support import TinyClassifier, blobs, fast_trainer, loader


class Slow(FirstBatchCheck):
    """Three forward passes of the model and two of a detached copy, then a pass with a stated cost."""

    def check_first_batch(self, trainer: Any, pl_module: Any, batch: Any) -> None:
        x, _ = batch
        copy = detached_copy(pl_module)
        with torch.no_grad():
            for _ in range(3):
                pl_module(x)
            for _ in range(2):
                copy(x)
        self.report(trainer, "pass", "fine", {"cost_steps": 2.5})


class Instant(Slow):
    progress_delay = 0.0  # the bar shows at once


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("recipe_callbacks: ")]


def test_start_and_cost_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    fast_trainer(tmp_path, callbacks=[Slow()], max_steps=2).fit(TinyClassifier(), loader(blobs()))
    start, done = _messages(caplog)
    assert start == "recipe_callbacks: Slow running on the first training batch..."
    # the check's own forward passes only (the training step's come after it)
    assert re.fullmatch(r"recipe_callbacks: Slow done in \d+\.\d s; 5 forward passes; ≈ 2\.5 training steps: PASS",
                        done), done


def test_progress_bar_for_a_long_check(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    caplog.set_level(logging.INFO)
    fast_trainer(tmp_path, callbacks=[Instant()], max_steps=2).fit(TinyClassifier(), loader(blobs()))
    err = capsys.readouterr().err
    assert re.search(r"recipe_callbacks: Instant: \d+ forward \[", err), err  # tqdm's bar, then cleared


def test_silenced_with_the_logging_level(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("lightning.pytorch", "pytorch_lightning", "lightning.fabric", "lightning_fabric"):
        caplog.set_level(logging.WARNING, logger=name)
    fast_trainer(tmp_path, callbacks=[Instant()], max_steps=2).fit(TinyClassifier(), loader(blobs()))
    assert _messages(caplog) == []
    assert "recipe_callbacks: Instant" not in capsys.readouterr().err


def test_only_rank_zero_speaks_under_ddp(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    trainer = fast_trainer(tmp_path, callbacks=[Slow()], max_steps=2, devices=2, strategy="ddp_spawn")
    trainer.fit(TinyClassifier(), loader(blobs()))
    out = capfd.readouterr()
    assert (out.out + out.err).count("recipe_callbacks: Slow done in") == 1
