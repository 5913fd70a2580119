"""GradientFlowCheck on real Trainer runs: planted dead layers, NaN gradients and gradients never
zeroed are caught; healthy models of the common families pass; the text reaches TensorBoard."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from recipe_callbacks import GradientFlowCheck, RecipeCheckError, RecipeReport
from recipe_callbacks.plumbing.finding import Finding
from tests.families import TwoOptimizerGAN, diabetes, healthy_runs
from tests.support import TinyClassifier, blobs, fast_trainer, loader, read_events, text_values

TAG = "recipe.gradient_flow_check"


def run(tmp_path: Path, model: Any, data: Any = None, **kw: Any) -> GradientFlowCheck:
    check_kw = kw.pop("check", {})
    check = GradientFlowCheck(on_fail="ignore", **check_kw)
    trainer = fast_trainer(tmp_path, callbacks=[check, RecipeReport(print_report=False)], max_steps=kw.pop("steps", 5),
                           **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, data if data is not None else loader(blobs()))
    return check


def only(check: GradientFlowCheck) -> Finding:
    assert len(check.findings) == 1, check.findings
    return check.findings[0]


class WithAux(TinyClassifier):
    """A second branch ``aux`` wired as ``mode`` says."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode
        self.aux = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "unused":  # computed, never connected to the loss
            _ = self.aux(x)
            return self.net(x)
        if self.mode == "zero":  # connected through a multiplication by zero
            return self.net(x) + 0.0 * self.aux(x)
        if self.mode == "detach":  # detach() after the hidden layer: the first layer never learns
            h = self.net[1](self.net[0](x)).detach()
            return self.net[2](h) + self.aux(x)
        if self.mode == "nan":  # sqrt at 0 in the hidden layer: an infinite gradient below it
            h = self.net[1](self.net[0](x))
            return self.net[2](torch.sqrt(h * 0.0)) + self.aux(x)
        return self.net(x) + self.aux(x)


class ManualSteps(TinyClassifier):
    def __init__(self, zero_grad: bool, every: int = 1) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.zero_grad_each_step = zero_grad
        self.every = every

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.manual_backward(loss / self.every)
        if (batch_idx + 1) % self.every == 0:
            opt.step()  # type: ignore[union-attr]
            if self.zero_grad_each_step:
                opt.zero_grad()  # type: ignore[union-attr]
        return loss


class HeadOnlyOptimizer(TinyClassifier):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.net[2].parameters(), lr=0.05)


class PooledEncoder(TinyClassifier):
    """A Hugging Face-like encoder: a ``pooler`` that is computed and not used by the head."""

    def __init__(self) -> None:
        super().__init__()
        self.pooler = nn.Sequential(nn.Linear(4, 4), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        _ = self.pooler(out)
        return out


class ZeroInitBranch(TinyClassifier):
    """A LoRA-like adapter: ``up`` starts at zero, so ``down`` gets a zero gradient at the first step."""

    def __init__(self) -> None:
        super().__init__()
        self.down, self.up = nn.Linear(8, 2, bias=False), nn.Linear(2, 4, bias=False)
        nn.init.zeros_(self.up.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x) + self.up(self.down(x))


# --------------------------------------------------------------------------- healthy
@pytest.mark.parametrize("family", ["lstm_lm", "gpt", "batchnorm_cnn", "tabular_regression"])
def test_healthy_families_pass(family: str, tmp_path: Path) -> None:
    model, data = healthy_runs()[family]
    check = run(tmp_path, model, data)
    f = only(check)
    assert f.status == "pass", f
    assert f.values["observed_steps"] == 3
    assert f.values["no_grad_params"] == f.values["zero_grad_params"] == 0
    # measured: the time in its hooks over this run's median step (a fraction of a step on these models)
    step = check._step_clock.median()
    assert step is not None and step > 0 and f.values["cost_seconds"] > 0
    assert f.values["cost_steps"] == pytest.approx(f.values["cost_seconds"] / step)
    # the report on disk carries the Finding
    report = json.loads((tmp_path / "run" / "recipe_report.json").read_text())
    assert any(d["check"] == "GradientFlowCheck" and d["status"] == "pass" for d in report["findings"])


def test_tied_embeddings_are_one_parameter(tmp_path: Path) -> None:
    model, data = healthy_runs()["gpt"]
    f = only(run(tmp_path, model, data))
    names = [n for n, _ in model.named_parameters()]
    assert "head.weight" not in names  # tied to tok.weight: one parameter, judged once
    assert f.values["trainable_params"] == len(names)


def test_manual_optimization_with_two_optimizers_passes(tmp_path: Path) -> None:
    f = only(run(tmp_path, TwoOptimizerGAN(), loader(diabetes(), 32)))
    assert f.status == "pass", f
    assert f.values["not_reset_params"] == 0


def test_manual_gradient_accumulation_that_zeroes_after_the_step_passes(tmp_path: Path) -> None:
    f = only(run(tmp_path, ManualSteps(zero_grad=True, every=2), steps=8))
    assert f.status == "pass", f


def test_zero_initialised_branch_and_clipping_and_accumulation_pass(tmp_path: Path) -> None:
    f = only(run(tmp_path, ZeroInitBranch(), gradient_clip_val=0.1, accumulate_grad_batches=2, steps=4))
    assert f.status == "pass", f


def test_frozen_layers_are_information_and_an_unused_pooler_is_allowed(tmp_path: Path) -> None:
    model = PooledEncoder()
    model.net[0].requires_grad_(False)
    f = only(run(tmp_path, model))
    assert f.status == "pass", f
    assert "frozen" in f.summary and "'net.0'" in f.summary
    assert "allow_unused" in f.summary and "'pooler.0'" in f.summary
    assert f.values["frozen_params"] == 2


# --------------------------------------------------------------------------- planted
def test_unused_branch_is_named(tmp_path: Path) -> None:
    f = only(run(tmp_path, WithAux("unused")))
    assert f.status == "warn", f
    assert "never got a gradient" in f.summary and "'aux'" in f.summary
    assert f.values["no_grad_params"] == 2
    # the parameter groups reach TensorBoard as text
    text = text_values(read_events(tmp_path / "run"), f"{TAG}/parameters")
    assert text and "aux.weight" in text[-1] and "never got a gradient" in text[-1]


def test_always_zero_gradient_is_named(tmp_path: Path) -> None:
    f = only(run(tmp_path, WithAux("zero")))
    assert f.status == "warn", f
    assert "exactly zero" in f.summary and "'aux'" in f.summary


def test_detach_in_the_wrong_place_fails_when_most_of_the_model_is_dead(tmp_path: Path) -> None:
    f = only(run(tmp_path, WithAux("detach")))
    assert f.status == "fail", f
    assert "'net.0'" in f.summary
    assert f.values["dead_fraction"] >= 0.5


def test_pooler_is_judged_when_allow_unused_is_empty(tmp_path: Path) -> None:
    f = only(run(tmp_path, PooledEncoder(), check={"allow_unused": []}))
    assert f.status == "warn" and "'pooler.0'" in f.summary


def test_first_non_finite_gradient_names_the_layer_in_backward_order(tmp_path: Path) -> None:
    f = only(run(tmp_path, WithAux("nan")))
    assert f.status == "fail", f
    # net.2 (nearest the loss) gets a finite gradient; the infinite one starts at net.0, below the sqrt
    assert "appears first in 'net.0'" in f.summary
    assert f.values["nonfinite_step"] == 0


def test_gradients_never_zeroed_under_manual_optimization_fail(tmp_path: Path) -> None:
    f = only(run(tmp_path, ManualSteps(zero_grad=False)))
    assert f.status == "fail", f
    assert "never reset" in f.summary and "zero_grad" in f.advice
    assert only(run(tmp_path / "ok", ManualSteps(zero_grad=True))).status == "pass"


def test_parameters_missing_from_the_optimizer_and_lr_zero_are_named(tmp_path: Path) -> None:
    f = only(run(tmp_path, HeadOnlyOptimizer()))
    assert f.status == "warn", f
    assert "in no optimizer" in f.summary and "'net.0'" in f.summary
    g = only(run(tmp_path / "lr0", TinyClassifier(lr=0.0)))
    assert g.status == "warn" and "did not move" in g.summary, g


def test_on_fail_raise_stops_the_fit(tmp_path: Path) -> None:
    check = GradientFlowCheck(on_fail="raise")
    trainer = fast_trainer(tmp_path, callbacks=[check], max_steps=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RecipeCheckError, match="NaN/Inf gradient"):
            trainer.fit(WithAux("nan"), loader(blobs()))


def test_hooks_come_off_after_the_watched_steps(tmp_path: Path) -> None:
    model = TinyClassifier()
    run(tmp_path, model, steps=6)
    for p in model.parameters():
        assert not getattr(p, "_post_accumulate_grad_hooks", None)
        assert not p._backward_hooks


class ReturnsNothing(TinyClassifier):
    def training_step(self, batch: Any, batch_idx: int) -> None:
        return None  # Lightning skips the optimizer step


def test_no_optimizer_step_is_a_skip(tmp_path: Path) -> None:
    f = only(run(tmp_path, ReturnsNothing(), steps=3, max_epochs=1, limit_train_batches=3))
    assert f.status == "skip" and "no optimizer step with gradients" in f.summary


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [({"num_steps": 0}, ValueError), ({"num_steps": 1.5}, TypeError), ({"fail_fraction": 0.0}, ValueError),
     ({"allow_unused": "pooler"}, TypeError), ({"max_skipped_steps": -1}, ValueError), ({"on_fail": "x"}, ValueError)],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], error: type[Exception]) -> None:
    name = next(iter(kwargs))
    with pytest.raises(error, match=rf"GradientFlowCheck\({name}="):
        GradientFlowCheck(**kwargs)


def test_bf16_mixed_precision_passes(tmp_path: Path) -> None:
    f = only(run(tmp_path, TinyClassifier(), precision="bf16-mixed"))
    assert f.status == "pass", f


class LazyHead(TinyClassifier):
    """A LazyLinear head: its parameter is materialised by the first forward."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.LazyLinear(4))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def test_lazy_modules_are_judged_once_materialised(tmp_path: Path) -> None:
    f = only(run(tmp_path, LazyHead()))
    assert f.status == "pass", f
    assert f.values["trainable_params"] == 4


class ManualHeadOnly(ManualSteps):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.net[2].parameters(), lr=0.05)


def test_manual_parameters_outside_every_optimizer_are_named_once(tmp_path: Path) -> None:
    # their gradients are never zeroed (zero_grad zeroes the optimizer's own); the finding is that
    # they are in no optimizer, not a second, misleading "never reset"
    f = only(run(tmp_path, ManualHeadOnly(zero_grad=True)))
    assert f.status == "warn", f
    assert "in no optimizer" in f.summary and "never reset" not in f.summary
