"""NoLRDecayWarning on real Trainer runs: each planted schedule mistake flagged, healthy schedules
pass in the right stage, and the preview equals the LR the run used, step by step."""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as sched

from recipe_callbacks import RecipeWarning
from recipe_callbacks.no_lr_decay_warning import NoLRDecayWarning
from tests.support import (
    TinyClassifier,
    blobs,
    fast_trainer,
    finding_values,
    loader,
    read_events,
    scalar_values,
    text_values,
)

BATCHES = 5  # batches per epoch: 80 samples, batch size 16 (odd, so accumulation leaves a short group)
TAG = "recipe.no_lr_decay_warning"


class Scheduled(TinyClassifier):
    """TinyClassifier whose ``configure_optimizers`` is ``make(self)``."""

    def __init__(self, make: Callable[[Scheduled], Any]) -> None:
        super().__init__(lr=0.1)
        self.make = make

    def configure_optimizers(self) -> Any:  # type: ignore[override]
        return self.make(self)


def sgd(m: pl.LightningModule, lr: float = 0.1, **kw: Any) -> torch.optim.SGD:
    return torch.optim.SGD(m.parameters(), lr=lr, **kw)


def with_scheduler(make_sched: Callable[[Any, pl.LightningModule], Any], **config: Any) -> Callable[[Any], Any]:
    def make(m: Any) -> Any:
        opt = sgd(m, momentum=0.9)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": make_sched(opt, m), **config}}

    return make


def fit(
    tmp_path: Path,
    model: pl.LightningModule,
    cb: NoLRDecayWarning,
    *,
    val: bool = False,
    extra: list[pl.Callback] | None = None,
    **kw: Any,
) -> pl.Trainer:
    kw.setdefault("max_epochs", 4)
    trainer = fast_trainer(tmp_path, callbacks=[*(extra or []), cb], log_every_n_steps=1, **kw)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning)  # Lightning's own config warnings
        warnings.filterwarnings("ignore", category=RecipeWarning)
        trainer.fit(model, loader(blobs(80)), loader(blobs(32, seed=1)) if val else None)
    return trainer


def statuses(cb: NoLRDecayWarning) -> dict[str, str]:
    return {key: f.status for key, f in cb._findings.items()}


def problems(cb: NoLRDecayWarning) -> dict[str, str]:
    return {k: s for k, s in statuses(cb).items() if s in ("warn", "fail")}


# ------------------------------------------------------------------ healthy schedules
def test_constant_lr_passes_early_and_logs_picture_and_lr(tmp_path: Path) -> None:
    cb = NoLRDecayWarning()
    trainer = fit(tmp_path, Scheduled(sgd), cb, max_epochs=2)
    assert problems(cb) == {}
    assert statuses(cb) == {"schedule": "pass", "actual_vs_planned": "pass"}
    assert cb.plan is not None and cb.plan.simulated_steps == trainer.estimated_stepping_batches == 10
    ea = read_events(tmp_path / "run")
    assert [e.step for e in ea.Images(f"{TAG}/planned_lr")] == [0]
    assert len(ea.Images(f"{TAG}/actual_vs_planned")) == 1
    assert scalar_values(ea, f"{TAG}/lr_group_0") == pytest.approx([0.1] * 10)


def cosine_to_end(opt: Any, m: pl.LightningModule) -> Any:
    return sched.CosineAnnealingLR(opt, T_max=int(m.trainer.estimated_stepping_batches))


def test_cosine_to_end_passes_final_stage(tmp_path: Path) -> None:
    cb = NoLRDecayWarning(stage="final")
    fit(tmp_path, Scheduled(with_scheduler(cosine_to_end, interval="step")), cb)
    assert problems(cb) == {}
    assert cb.plan is not None and cb.plan.group_lrs(0)[-1] < 0.01 * 0.1


def test_cosine_to_end_warns_early_stage(tmp_path: Path) -> None:
    cb = NoLRDecayWarning(stage="early")
    fit(tmp_path, Scheduled(with_scheduler(cosine_to_end, interval="step")), cb)
    assert problems(cb) == {"decay_in_early_stage": "warn"}
    assert "decay is on" in cb.finding("decay_in_early_stage").summary  # type: ignore[union-attr]


def test_constant_lr_warns_in_final_stage(tmp_path: Path) -> None:
    cb = NoLRDecayWarning(stage="final")
    fit(tmp_path, Scheduled(sgd), cb, max_epochs=1)
    assert problems(cb) == {"never_decays": "warn"}


# ------------------------------------------------------------------ planted schedule mistakes
def test_lr_near_zero_long_before_the_end(tmp_path: Path) -> None:
    cb = NoLRDecayWarning(stage="final")
    fit(tmp_path, Scheduled(with_scheduler(lambda o, m: sched.ExponentialLR(o, gamma=0.5), interval="step")), cb)
    assert problems(cb) == {"decays_too_early": "fail"}
    finding = cb.finding("decays_too_early")
    assert finding is not None and finding.values["below_step"] == 7 and finding.values["planned_steps"] == 20


def test_cosine_t_max_in_epochs_stepped_per_step_wraps_around(tmp_path: Path) -> None:
    cb = NoLRDecayWarning(stage="final")
    make = with_scheduler(lambda o, m: sched.CosineAnnealingLR(o, T_max=m.trainer.max_epochs), interval="step")
    fit(tmp_path, Scheduled(make), cb)
    finding = cb.finding("length:0")
    assert finding is not None and finding.status == "fail"
    assert "wraps around" in finding.summary and "looks counted in epochs" in finding.advice
    lrs = cb.plan.group_lrs(0)  # type: ignore[union-attr]
    assert lrs[4] == pytest.approx(0.0, abs=1e-12) and lrs[8] == pytest.approx(0.1)  # down and back up


def test_cosine_t_max_in_steps_stepped_per_epoch(tmp_path: Path) -> None:
    cb = NoLRDecayWarning(stage="final")
    fit(tmp_path, Scheduled(with_scheduler(cosine_to_end)), cb)  # Lightning's default interval: "epoch"
    finding = cb.finding("length:0")
    assert finding is not None and finding.status == "fail"
    assert finding.values["stepped"] == 4 and finding.values["T_max"] == 20
    assert "looks counted in optimizer steps" in finding.advice and "'interval': 'step'" in finding.advice


def test_onecycle_total_steps_longer_than_run(tmp_path: Path) -> None:
    cb = NoLRDecayWarning(stage="final")
    make = with_scheduler(lambda o, m: sched.OneCycleLR(o, max_lr=0.1, total_steps=40), interval="step")
    fit(tmp_path, Scheduled(make), cb)
    finding = cb.finding("length:0")
    assert finding is not None and finding.status == "fail" and "50% through its cycle" in finding.summary


def test_onecycle_total_steps_shorter_than_run_flagged_before_the_crash(tmp_path: Path) -> None:
    cb = NoLRDecayWarning(stage="final")
    make = with_scheduler(lambda o, m: sched.OneCycleLR(o, max_lr=0.1, total_steps=12), interval="step")
    with pytest.raises(ValueError, match="Tried to step 13 times"):
        fit(tmp_path, Scheduled(make), cb)
    finding = cb.finding("length:0")
    assert finding is not None and finding.status == "fail"
    assert finding.values["error_step"] == 13 and "will raise after optimizer step 13" in finding.summary


def test_step_and_multistep_that_never_fire(tmp_path: Path) -> None:
    cb = NoLRDecayWarning(stage="final")
    fit(tmp_path, Scheduled(with_scheduler(lambda o, m: sched.StepLR(o, step_size=10))), cb, max_epochs=3)
    assert cb.finding("length:0").status == "fail"  # type: ignore[union-attr]
    assert "never decays" in cb.finding("length:0").summary  # type: ignore[union-attr]

    cb = NoLRDecayWarning(stage="final")
    make = with_scheduler(lambda o, m: sched.MultiStepLR(o, milestones=[2, 30]))
    fit(tmp_path / "multi", Scheduled(make), cb, max_epochs=4)
    finding = cb.finding("length:0")
    assert finding is not None and "[30] are never reached" in finding.summary


def test_interval_at_the_top_level_of_the_dict(tmp_path: Path) -> None:
    def make(m: Any) -> Any:
        opt = sgd(m)
        return {"optimizer": opt, "lr_scheduler": cosine_to_end(opt, m), "interval": "step", "frequency": 1}

    cb = NoLRDecayWarning(stage="final")
    fit(tmp_path, Scheduled(make), cb)
    finding = cb.finding("misplaced_keys")
    assert finding is not None and finding.status == "fail"
    assert "'frequency', 'interval'" in finding.summary and "inside the scheduler dict" in finding.advice
    # Lightning then steps per epoch, which the preview shows and the length check names
    assert cb.finding("length:0").status == "fail"  # type: ignore[union-attr]


def test_wrapper_is_removed_and_configure_optimizers_runs_once(tmp_path: Path) -> None:
    calls = []

    def make(m: Any) -> Any:
        calls.append(1)
        return sgd(m)

    model = Scheduled(make)
    fit(tmp_path, model, NoLRDecayWarning(), max_epochs=1)
    assert len(calls) == 1 and "configure_optimizers" not in vars(model)


def test_frequency_larger_than_batches_per_epoch(tmp_path: Path) -> None:
    cb = NoLRDecayWarning(stage="final")
    make = with_scheduler(lambda o, m: sched.StepLR(o, step_size=1), interval="step", frequency=BATCHES + 1)
    fit(tmp_path, Scheduled(make), cb)
    finding = cb.finding("never_steps:0")
    assert finding is not None and finding.status == "fail" and "larger than the 5 batches" in finding.summary


class ManualModel(TinyClassifier):
    def __init__(self, step_scheduler: bool) -> None:
        super().__init__(lr=0.1)
        self.automatic_optimization = False
        self.step_scheduler = step_scheduler

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        loss = nn.functional.cross_entropy(self(batch[0]), batch[1])
        opt.zero_grad()  # type: ignore[union-attr]
        self.manual_backward(loss)
        opt.step()  # type: ignore[union-attr]
        return loss

    def on_train_epoch_end(self) -> None:
        if self.step_scheduler:
            self.lr_schedulers().step()  # type: ignore[union-attr]

    def configure_optimizers(self) -> Any:
        opt = sgd(self)
        return [opt], [sched.StepLR(opt, step_size=1, gamma=0.5)]


@pytest.mark.parametrize("step_scheduler", [False, True])
def test_manual_optimisation_with_a_scheduler_nothing_steps(tmp_path: Path, step_scheduler: bool) -> None:
    cb = NoLRDecayWarning(stage="final")
    fit(tmp_path, ManualModel(step_scheduler), cb, max_epochs=3)
    if step_scheduler:
        assert problems(cb) == {}
    else:
        finding = cb.finding("manual_not_stepped:0")
        assert finding is not None and finding.status == "fail" and "lr_schedulers().step()" in finding.advice
        assert cb.finding("actual_vs_planned").status == "warn"  # type: ignore[union-attr]


@pytest.mark.parametrize("monitor", ["val_acc", "val_loss"])
def test_reduce_on_plateau_metric_not_logged(tmp_path: Path, monitor: str) -> None:
    cb = NoLRDecayWarning(stage="final")
    make = with_scheduler(lambda o, m: sched.ReduceLROnPlateau(o), monitor=monitor, strict=False)
    fit(tmp_path, Scheduled(make), cb, val=True, max_epochs=3)
    finding = cb.finding("plateau_metric:0")
    if monitor == "val_loss":
        assert finding is None and "never_decays" not in statuses(cb)
    else:
        assert finding is not None and finding.status == "fail"
        assert finding.values["plateau_missed_steps"] == 3 and "'val_loss'" in finding.summary


def test_reduce_on_plateau_strict_crash_is_in_the_report(tmp_path: Path) -> None:
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    cb = NoLRDecayWarning(stage="final")
    make = with_scheduler(lambda o, m: sched.ReduceLROnPlateau(o), monitor="val_acc")
    with pytest.raises(MisconfigurationException, match="val_acc"):
        fit(tmp_path, Scheduled(make), cb, val=True, max_epochs=2)
    finding = cb.finding("plateau_metric:0")
    assert finding is not None and finding.status == "fail" and "'val_acc'" in finding.summary


def test_optimizer_notes(tmp_path: Path) -> None:
    cb = NoLRDecayWarning()
    fit(tmp_path, Scheduled(lambda m: torch.optim.AdamW(m.parameters(), lr=0.1)), cb, max_epochs=1)
    assert problems(cb) == {"adam_lr": "warn", "weight_decay_bias_norm": "warn"}
    assert cb.finding("adam_lr").values["ratio_to_3e-4"] == pytest.approx(0.1 / 3e-4)  # type: ignore[union-attr]

    def grouped(m: Any) -> Any:
        decay = [p for n, p in m.named_parameters() if n.endswith("weight")]
        rest = [p for n, p in m.named_parameters() if not n.endswith("weight")]
        groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=3e-4)

    cb = NoLRDecayWarning()
    fit(tmp_path / "healthy", Scheduled(grouped), cb, max_epochs=1)
    assert problems(cb) == {}


# ------------------------------------------------------------------ the preview is the real schedule
class LRRecorder(pl.Callback):
    """The oracle: the LR every param group has when the optimizer steps."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any) -> None:
        self.lrs.append([float(g["lr"]) for g in optimizer.param_groups])


def _scheduler(kind: str, interval: str) -> Callable[[Any, pl.LightningModule], Any]:
    def make(opt: Any, m: pl.LightningModule) -> Any:
        t = m.trainer
        n = int(t.estimated_stepping_batches) if interval == "step" else int(t.max_epochs)  # type: ignore[arg-type]
        if kind == "step":
            return sched.StepLR(opt, step_size=2, gamma=0.5)
        if kind == "cosine":
            return sched.CosineAnnealingLR(opt, T_max=n)
        return sched.OneCycleLR(opt, max_lr=0.2, total_steps=n)

    return make


@pytest.mark.parametrize("accumulate", [1, 2])
@pytest.mark.parametrize("interval", ["step", "epoch"])
@pytest.mark.parametrize("kind", ["step", "cosine", "onecycle"])
def test_preview_equals_the_lr_the_run_used(tmp_path: Path, kind: str, interval: str, accumulate: int) -> None:
    cb, oracle = NoLRDecayWarning(stage="final"), LRRecorder()
    make = with_scheduler(_scheduler(kind, interval), interval=interval)
    fit(tmp_path, Scheduled(make), cb, extra=[oracle], max_epochs=3, accumulate_grad_batches=accumulate)
    assert cb.plan is not None
    used = np.asarray(oracle.lrs)
    assert used.shape == cb.plan.lrs.shape == (3 * math.ceil(BATCHES / accumulate), 1)
    np.testing.assert_allclose(cb.plan.lrs, used, rtol=1e-12, atol=0)
    assert len(np.unique(used)) > 1  # the schedule did something
    assert cb.finding("actual_vs_planned").status == "pass"  # type: ignore[union-attr]


@pytest.mark.parametrize(("frequency", "stepped"), [(2, 4), (3, 0)])
def test_preview_follows_lightning_frequency_rule_with_accumulation(
    tmp_path: Path, frequency: int, stepped: int
) -> None:
    # Lightning counts a "step" frequency in batch_idx + 1, not in optimizer steps: with 5 batches and
    # accumulation 2 the optimizer steps after batches 2, 4 and 5, so frequency 3 never comes round.
    cb, oracle = NoLRDecayWarning(stage="final"), LRRecorder()
    make = with_scheduler(lambda o, m: sched.StepLR(o, step_size=1, gamma=0.5), interval="step", frequency=frequency)
    fit(tmp_path, Scheduled(make), cb, extra=[oracle], max_epochs=2, accumulate_grad_batches=2, max_steps=5)
    assert cb.plan is not None and cb.plan.scheduler_steps == [stepped]
    np.testing.assert_allclose(cb.plan.lrs[:, 0], [o[0] for o in oracle.lrs], rtol=1e-12)
    assert (cb.finding("never_steps:0") is not None) == (stepped == 0)


# ------------------------------------------------------------------ no observer effect, nothing touched
class StateProbe(pl.Callback):
    def __init__(self) -> None:
        self.seen: list[Any] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        opt, s = trainer.optimizers[0], trainer.lr_scheduler_configs[0].scheduler
        self.seen.append((copy.deepcopy(opt.state_dict()), copy.deepcopy(s.state_dict()), opt.step))


def test_preview_leaves_real_optimizer_and_scheduler_untouched(tmp_path: Path) -> None:
    before, after = StateProbe(), StateProbe()
    make = with_scheduler(lambda o, m: sched.OneCycleLR(o, max_lr=0.2, total_steps=20), interval="step")
    cb = NoLRDecayWarning(stage="final")
    trainer = fast_trainer(tmp_path, callbacks=[before, cb, after], max_epochs=4)
    trainer.fit(Scheduled(make), loader(blobs(80)))
    (opt_a, sched_a, step_a), (opt_b, sched_b, step_b) = before.seen[0], after.seen[0]
    assert opt_a == opt_b and sched_a == sched_b and step_a is step_b
    assert cb.plan is not None and cb.plan.scheduler_steps == [20]


def _weights(tmp_path: Path, callbacks: list[pl.Callback]) -> list[torch.Tensor]:
    pl.seed_everything(3)
    model = Scheduled(with_scheduler(cosine_to_end, interval="step"))
    trainer = fast_trainer(tmp_path, callbacks=callbacks, max_epochs=2)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RecipeWarning)
        trainer.fit(model, loader(blobs(80), shuffle=True))
    return [p.detach().clone() for p in model.parameters()]


def test_no_observer_effect(tmp_path: Path) -> None:
    plain = _weights(tmp_path / "plain", [])
    watched = _weights(tmp_path / "watched", [NoLRDecayWarning(stage="early")])
    assert all(torch.equal(a, b) for a, b in zip(plain, watched, strict=True))


# ------------------------------------------------------------------ a difference at the end
class SkipsSchedulerSteps(Scheduled):
    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if self.trainer.global_step % 2 == 0:
            scheduler.step()


def test_skipped_scheduler_steps_are_reported(tmp_path: Path) -> None:
    cb = NoLRDecayWarning(stage="final")
    fit(tmp_path, SkipsSchedulerSteps(with_scheduler(cosine_to_end, interval="step")), cb)
    finding = cb.finding("actual_vs_planned")
    assert finding is not None and finding.status == "warn"
    assert "stepped 10 times, the preview planned 20" in finding.summary
    assert finding.values["mismatched_steps"] > 0


# ------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"stage": "late"}, ValueError, r"NoLRDecayWarning\(stage='late'\)"),
        ({"min_lr_fraction": 0.0}, ValueError, "min_lr_fraction"),
        ({"min_lr_fraction": 1.5}, ValueError, "min_lr_fraction"),
        ({"length_tolerance": -0.1}, ValueError, "length_tolerance"),
        ({"adam_lr_factor": 0.5}, ValueError, "adam_lr_factor"),
        ({"log_every_n_steps": 0}, ValueError, "log_every_n_steps"),
        ({"max_preview_steps": "many"}, TypeError, "max_preview_steps"),
        ({"on_fail": "explode"}, ValueError, "on_fail"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        NoLRDecayWarning(**kwargs)


def test_on_fail_raise_stops_before_the_first_step(tmp_path: Path) -> None:
    from recipe_callbacks import RecipeCheckError

    cb = NoLRDecayWarning(stage="final", on_fail="raise")
    oracle = LRRecorder()
    with pytest.raises(RecipeCheckError, match=r"below 0\.01 of its peak"):
        fit(
            tmp_path,
            Scheduled(with_scheduler(lambda o, m: sched.ExponentialLR(o, gamma=0.5), interval="step")),
            cb,
            extra=[oracle],
        )
    assert oracle.lrs == []


# ------------------------------------------------------------------ DDP
class DDPCosine(TinyClassifier):
    """Module-level (picklable) model: cosine with T_max counted in epochs, stepped per step."""

    def configure_optimizers(self) -> Any:
        opt = sgd(self)
        cosine = sched.CosineAnnealingLR(opt, T_max=2)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}


def test_ddp_spawn_two_processes(tmp_path: Path) -> None:
    cb = NoLRDecayWarning(stage="final", on_fail="ignore")
    trainer = fast_trainer(
        tmp_path, callbacks=[cb], max_epochs=2, accelerator="cpu", devices=2, strategy="ddp_spawn", log_every_n_steps=1
    )
    trainer.fit(DDPCosine(), loader(blobs(64)))
    ea = read_events(tmp_path / "run")
    assert [e.step for e in ea.Images(f"{TAG}/planned_lr")] == [0]
    # 64 samples over 2 ranks in batches of 16: 2 optimizer steps per epoch, 4 in all, logged by rank 0 only
    assert "- planned_steps: 4" in text_values(ea, f"{TAG}/plan")[-1]  # the plan's one-time numbers: text
    shown = finding_values(ea, TAG)
    assert shown["stepped"] == 4.0 and shown["T_max"] == 2.0
    assert len(scalar_values(ea, f"{TAG}/lr_group_0")) == 4


# ------------------------------------------------------------------ resume
def test_resumed_run_previews_the_rest_and_judges_the_whole_run(tmp_path: Path) -> None:
    # T_max=20 fits the whole 4-epoch run; the first fit stops after 2 epochs and is resumed
    make = with_scheduler(lambda o, m: sched.CosineAnnealingLR(o, T_max=20), interval="step")
    first = NoLRDecayWarning(stage="final")
    trainer = fit(tmp_path / "a", Scheduled(make), first, max_epochs=2)
    assert first.finding("length:0") is not None  # judged alone, 2 epochs do not match T_max=20
    trainer.save_checkpoint(tmp_path / "half.ckpt")
    cb, oracle = NoLRDecayWarning(stage="final"), LRRecorder()
    resumed = fast_trainer(tmp_path / "b", callbacks=[oracle, cb], max_epochs=4)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RecipeWarning)
        resumed.fit(Scheduled(make), loader(blobs(80)), ckpt_path=tmp_path / "half.ckpt")
    assert problems(cb) == {}, [f.summary for f in cb.findings]
    assert cb.plan is not None and cb.plan.steps.tolist() == list(range(10, 20))
    np.testing.assert_allclose(cb.plan.lrs, np.asarray(oracle.lrs), rtol=1e-12)
