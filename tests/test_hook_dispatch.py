"""Hooks Lightning does not call: counted through Lightning's own profiler, which records one action per
callback hook it dispatches (``[Callback]<state_key>.<hook>``)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.profilers import SimpleProfiler
from typing_extensions import override

from recipe_callbacks import FullEvalSet, GradientFlowCheck, RecipeCallback, RecipeReport, presets
from recipe_callbacks.core.cost import StepClock
from recipe_callbacks.plumbing.callback_base import STEP_HOOKS
from recipe_callbacks.plumbing.hook_dispatch import (
    SKIPS_NON_CALLABLE,
    dispatched_step_hooks,
    switch_off,
    switch_on,
    switched_off,
    unused_hooks,
)
from tests.support import TinyClassifier, blobs, fast_trainer, loader

STEPS = StepClock().intervals + 20


def _dispatches(profiler: SimpleProfiler) -> dict[str, int]:
    return {name: len(times) for name, times in profiler.recorded_durations.items() if name.startswith("[Callback]")}


def _fit(tmp_path: Path, callbacks: list[Any], steps: int = STEPS) -> tuple[pl.Trainer, dict[str, int]]:
    profiler = SimpleProfiler()
    trainer = fast_trainer(tmp_path, max_steps=steps, max_epochs=-1, callbacks=callbacks, profiler=profiler,
                           limit_val_batches=2, val_check_interval=10, check_val_every_n_epoch=None)
    trainer.fit(TinyClassifier(), loader(blobs(n=64)), loader(blobs(n=32, seed=1)))
    return trainer, _dispatches(profiler)


def test_lightning_calls_no_hook_a_callback_does_not_override(tmp_path: Path) -> None:
    assert SKIPS_NON_CALLABLE  # the Lightning this project pins
    flow, full, report = GradientFlowCheck(), FullEvalSet(), RecipeReport()
    trainer, calls = _fit(tmp_path, [flow, full, report])
    assert trainer.global_step == STEPS
    for cb in (flow, full, report):
        assert "on_before_zero_grad" in unused_hooks(type(cb))
        assert f"[Callback]{cb.state_key}.on_before_zero_grad" not in calls
    assert f"[Callback]{full.state_key}.on_before_backward" not in calls
    assert calls[f"[Callback]{report.state_key}.on_train_batch_end"] == STEPS  # the run record needs every batch
    assert calls[f"[Callback]{full.state_key}.on_validation_batch_end"] > 0  # what it does override is called
    # and every verdict is there as before
    assert flow.findings[0].status == "pass" and full.findings[-1].status == "pass"


def test_an_idle_callback_is_not_called_at_its_step_hooks(tmp_path: Path) -> None:
    flow = GradientFlowCheck()  # its verdict comes at the first step
    _, calls = _fit(tmp_path, [flow])
    timed = StepClock().intervals
    for hook in ("on_train_batch_start", "on_before_backward", "on_train_batch_end"):
        n = calls.get(f"[Callback]{flow.state_key}.{hook}", 0)
        # called until the step clock has its median (timed + 2 batches), never after
        assert 1 <= n <= timed + 2 < STEPS, (hook, n)
    assert flow.idle and switched_off(flow) >= STEP_HOOKS


class LateCost(RecipeCallback):
    """States a cost at a late step, after the clock went quiet: the clock's hook must wake to settle it."""

    one_off = True

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.global_step == STEPS - 5:
            self.report(trainer, "pass", "late", {"cost_steps": 0.0})
            self.state_cost(0.5)
            self.finish_early()


def test_a_cost_stated_after_the_clock_went_quiet_is_still_settled(tmp_path: Path) -> None:
    check = LateCost()
    _, calls = _fit(tmp_path, [check])
    values = check.findings[0].values
    assert values["cost_seconds"] == 0.5 and values["cost_steps"] > 1.0  # 0.5 s over a step of milliseconds
    assert calls[f"[Callback]{check.state_key}.on_train_batch_start"] < STEPS  # quiet in between


def test_a_preset_dispatches_a_fraction_of_its_step_hooks(tmp_path: Path) -> None:
    cbs = presets.callbacks("monitor")
    registered = len(cbs) * len(STEP_HOOKS)
    assert dispatched_step_hooks(cbs, STEP_HOOKS) < registered / 2  # before the fit: the unused ones
    _, calls = _fit(tmp_path, cbs)
    late = dispatched_step_hooks(cbs, STEP_HOOKS)
    assert late <= 12, late  # after the one-off checks went idle
    made = sum(n for name, n in calls.items() if name.rsplit(".", 1)[-1] in STEP_HOOKS)
    assert made < 0.4 * registered * STEPS, (made, registered * STEPS)  # Lightning's calls over the whole fit
    statuses = {(f.check, f.status) for cb in cbs if isinstance(cb, RecipeCallback) for f in cb.findings}
    # every check judged as without switching (the tiny model has no LR schedule: the final stage's warning)
    assert {s for _, s in statuses} <= {"pass", "skip", "warn"} and {c for c, s in statuses if s == "warn"} == {
        "NoLRDecayWarning"
    }
    assert ("UpdateRatioMonitor", "pass") in statuses and ("GradientFlowCheck", "pass") in statuses


def test_switching_on_brings_back_what_was_on_the_instance() -> None:
    cb = pl.Callback()
    wrapper = lambda *args: None  # noqa: E731 - e.g. a benchmark's timing wrapper
    cb.on_train_batch_end = wrapper  # type: ignore[method-assign]
    switch_off(cb, ["on_train_batch_end", "on_before_backward", "on_save_checkpoint"])
    assert cb.on_train_batch_end is None and cb.on_before_backward is None  # type: ignore[comparison-overlap]
    assert callable(cb.on_save_checkpoint)  # Lightning calls it directly: never switched off
    switch_on(cb, ["on_train_batch_end", "on_before_backward"])
    assert cb.on_train_batch_end is wrapper
    assert "on_before_backward" not in cb.__dict__ and callable(cb.on_before_backward)
    assert switched_off(cb) == frozenset()


def test_a_switched_off_callback_pickles_for_ddp_spawn(tmp_path: Path) -> None:
    flow = GradientFlowCheck()
    _fit(tmp_path, [flow])
    again = pickle.loads(pickle.dumps(flow))
    assert again.idle and switched_off(again) == switched_off(flow)
    _, calls = _fit(tmp_path / "again", [again], steps=3)  # a new fit wakes it
    assert calls[f"[Callback]{again.state_key}.on_before_backward"] == 3


def test_the_monitors_are_called_between_their_samples_only_where_they_count(tmp_path: Path) -> None:
    from recipe_callbacks import NoLRDecayWarning, UpdateRatioMonitor
    from recipe_callbacks.core.update_ratio import sampled_step

    ratio, lr = UpdateRatioMonitor(every_n_steps=10), NoLRDecayWarning(stage="final", on_fail="ignore")
    _, calls = _fit(tmp_path, [ratio, lr])
    sampled = sum(sampled_step(s, 10) for s in range(STEPS))  # 0, 1, 2, 4, 8, 10, 20, ...
    assert calls[f"[Callback]{ratio.state_key}.on_train_batch_start"] == STEPS  # it decides there
    assert calls[f"[Callback]{ratio.state_key}.on_before_optimizer_step"] == sampled  # was every step
    assert calls[f"[Callback]{ratio.state_key}.on_train_batch_end"] == sampled
    assert len(ratio.ratio_steps) == sampled and ratio.findings[0].status == "pass"
    # without a ReduceLROnPlateau the batch hooks count nothing: only the optimizer step is called
    assert calls[f"[Callback]{lr.state_key}.on_before_optimizer_step"] == STEPS
    assert f"[Callback]{lr.state_key}.on_train_batch_start" not in calls  # was every step
    assert f"[Callback]{lr.state_key}.on_train_batch_end" not in calls
    assert lr.finding("actual_vs_planned").values["compared_steps"] == STEPS
    _, again = _fit(tmp_path / "again", [ratio], steps=3)  # a next fit samples its steps 0, 1, 2 afresh
    assert again[f"[Callback]{ratio.state_key}.on_before_optimizer_step"] == 3


class StepReads(RecipeCallback):
    """Compares the step counter the recipe callbacks read with ``trainer.global_step`` at every batch hook."""

    def __init__(self) -> None:
        super().__init__()
        self.pairs: list[tuple[int, int]] = []

    def _compare(self, trainer: Any) -> None:
        assert self._counter is not None
        self.pairs.append((self._counter.completed, trainer.global_step))

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._compare(trainer)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._compare(trainer)


class ManualEveryOther(TinyClassifier):
    """Manual optimization that steps the optimizer on every other batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = super().training_step(batch, batch_idx)
        self.manual_backward(loss)
        if batch_idx % 2:
            self.optimizers().step()  # type: ignore[union-attr]
            self.optimizers().zero_grad()  # type: ignore[union-attr]
        return loss


def test_the_step_counter_is_the_global_step_at_every_batch_also_manual_accumulated_and_resumed(
    tmp_path: Path,
) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    for name, module, flags in (("auto", TinyClassifier(), {"accumulate_grad_batches": 3}),
                                ("manual", ManualEveryOther(), {})):
        reads, ckpt = StepReads(), ModelCheckpoint(dirpath=tmp_path / name, save_last=True)
        trainer = fast_trainer(tmp_path / name, max_epochs=2, callbacks=[reads, ckpt], enable_checkpointing=True,
                               **flags)
        trainer.fit(module, loader(blobs(n=96)))
        assert len(reads.pairs) == 24 and all(a == b for a, b in reads.pairs) and reads.pairs[-1][1] > 0
        resumed = StepReads()
        trainer = fast_trainer(tmp_path / name, max_epochs=3, callbacks=[resumed], enable_checkpointing=True, **flags)
        trainer.fit(module, loader(blobs(n=96)), ckpt_path=str(tmp_path / name / "last.ckpt"))
        assert len(resumed.pairs) == 12 and all(a == b for a, b in resumed.pairs)
        assert resumed.pairs[0][0] == reads.pairs[-1][1]  # the restored count, read through the counter
