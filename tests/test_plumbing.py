"""The shared plumbing: one skip mechanism, caught where Lightning calls a hook, and one sum over
the processes of a distributed run (real ``ddp_spawn`` with 2 CPU processes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from typing_extensions import override

from recipe_callbacks import BatchResolutionError, RecipeCallback, RecipeReport
from recipe_callbacks.core.cost import StepClock
from recipe_callbacks.core.skip import CheckSkipped
from recipe_callbacks.plumbing.callback_base import FirstBatchCheck
from recipe_callbacks.plumbing.ranks import sum_over_ranks
from tests.support import TinyClassifier, blobs, fast_trainer, loader, read_events, text_values


class SkipsAtTrainStart(RecipeCallback):
    """Raises from a hook, as any check may when it cannot run."""

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        raise CheckSkipped("the model has no input layer this check understands", "input_key", key="layer")


class SkipsOnFirstBatch(FirstBatchCheck):
    def check_first_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        raise BatchResolutionError("the batch has no tensor under 'pixels'", "batch_to_xy")


def test_a_hook_that_raises_check_skipped_leaves_a_skip_naming_the_argument(tmp_path: Path) -> None:
    hook_check, batch_check = SkipsAtTrainStart(), SkipsOnFirstBatch()
    trainer = fast_trainer(tmp_path, max_steps=3, callbacks=[hook_check, batch_check, RecipeReport()])
    trainer.fit(TinyClassifier(), loader(blobs()))

    assert trainer.global_step == 3  # the fit went on
    (finding,) = hook_check.findings
    assert finding.status == "skip"
    assert finding.summary == "the model has no input layer this check understands"
    assert finding.advice == "set SkipsAtTrainStart(input_key=...)"
    (batch_finding,) = batch_check.findings
    assert batch_finding.status == "skip" and "batch_to_xy" in batch_finding.advice
    assert batch_check.early_finished  # the one-off check counts as done, so the early report comes
    report = text_values(read_events(tmp_path / "run"), "recipe/report")[-1]
    assert "SkipsAtTrainStart" in report and "SkipsOnFirstBatch" in report


class Parent(RecipeCallback):
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        raise CheckSkipped("the parent cannot run", "input_key")


class Child(Parent):
    """Calls the parent's hook through super(): a skip there must end the child's hook too."""

    went_on = False

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.went_on = True


def test_a_skip_in_a_parent_hook_called_through_super_reaches_the_outermost_hook(tmp_path: Path) -> None:
    child, parent = Child(), Parent()
    trainer = fast_trainer(tmp_path, max_steps=2, callbacks=[child, parent])
    trainer.fit(TinyClassifier(), loader(blobs()))
    assert trainer.global_step == 2 and not child.went_on
    assert [(f.status, f.summary, f.advice) for f in child.findings] == [
        ("skip", "the parent cannot run", "set Child(input_key=...)")
    ]
    assert [f.summary for f in parent.findings] == ["the parent cannot run"]  # the parent alone still skips


class FinishesAtOnce(RecipeCallback):
    """A one-off check done at its first batch: its step hooks are then idle (one attribute check)."""

    one_off = True
    calls = 0

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.calls += 1
        self.finish_early()


def test_a_finished_one_off_check_is_idle_once_the_step_clock_has_its_median(tmp_path: Path) -> None:
    check = FinishesAtOnce()
    timed = StepClock().intervals
    trainer = fast_trainer(tmp_path, max_steps=timed + 10, max_epochs=-1, callbacks=[check])
    trainer.fit(TinyClassifier(), loader(blobs()))
    # idle once the clock has its median (the first interval and `timed` more: at batch start timed + 2)
    assert check.idle and check.calls == timed + 1
    trainer = fast_trainer(tmp_path / "again", max_steps=3, max_epochs=-1, callbacks=[check])
    trainer.fit(TinyClassifier(), loader(blobs()))
    assert check.calls == timed + 4  # a new fit wakes it: idle holds for one fit


def test_other_exceptions_still_reach_the_user() -> None:
    class Breaks(RecipeCallback):
        @override
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            raise RuntimeError("a real bug in the check")

    try:
        Breaks().on_train_start(None, None)  # type: ignore[arg-type]
    except RuntimeError as err:
        assert "a real bug" in str(err)
    else:
        raise AssertionError("a RuntimeError must not be swallowed as a skip")


def test_sum_over_ranks_on_one_process_is_the_parts_as_float64() -> None:
    class OneProcess:
        world_size = 1

    counts, total = sum_over_ranks(OneProcess(), [torch.tensor([[1, 2], [3, 4]]), 2.5])  # type: ignore[arg-type]
    assert counts.dtype == torch.float64 and counts.shape == (2, 2) and counts.tolist() == [[1, 2], [3, 4]]
    assert total.item() == 2.5


class SumsRanks(RecipeCallback):
    """Sums ``rank + 1`` and a per-rank count vector over the processes at train start."""

    def __init__(self, out: Path) -> None:
        super().__init__()
        self.out = out

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        rank = trainer.global_rank
        scalar, counts = sum_over_ranks(trainer, [float(rank + 1), torch.tensor([rank, 10 * rank, 1])])
        assert scalar.shape == () and counts.shape == (3,)
        assert counts.device.type == "cpu"
        # Every rank must hold the same sums: gather them, and rank 0 writes what it saw (the spawned
        # processes' callback state does not come back to the test's process).
        gathered = trainer.strategy.all_gather(torch.tensor([float(scalar), *counts.tolist()]))
        if rank == 0:
            self.out.write_text(json.dumps([[float(scalar)], counts.tolist(), gathered.reshape(-1).tolist()]))


def test_sum_over_ranks_under_ddp_spawn_two_processes(tmp_path: Path) -> None:
    out = tmp_path / "sums.json"
    check = SumsRanks(out)
    trainer = fast_trainer(
        tmp_path, logger=False, max_steps=1, callbacks=[check], accelerator="cpu", devices=2, strategy="ddp_spawn"
    )
    trainer.fit(TinyClassifier(), loader(blobs()))
    scalar, counts, gathered = json.loads(out.read_text())
    assert scalar == [3.0]  # 1 + 2
    assert counts == [1.0, 10.0, 2.0]
    assert gathered == [3.0, 1.0, 10.0, 2.0] * 2  # both ranks hold the same sums
