"""UpdateRatioMonitor on real Trainer runs, read back from TensorBoard event files."""

from __future__ import annotations

import json
import math
import warnings
from collections import deque
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from recipe_callbacks import RecipeCheckError, RecipeReport, RecipeWarning
from recipe_callbacks.core.pictures import FIGURE_SHAPE
from recipe_callbacks.update_ratio_monitor import UpdateRatioMonitor
from tests.support import TinyClassifier, blobs, fast_trainer, loader, read_events, scalar_values

TAG = "recipe.update_ratio_monitor"


class TanhClassifier(TinyClassifier):
    """TinyClassifier with a tanh hidden layer, batches as dicts."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))
        with torch.no_grad():
            self.net[0].weight.mul_(scale)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self(batch["x"]), batch["y"])


class DeadReluClassifier(TinyClassifier):
    """Every hidden ReLU dead from the start: a huge negative bias on the first layer."""

    def __init__(self) -> None:
        super().__init__(lr=0.05)
        with torch.no_grad():
            self.net[0].bias.fill_(-100.0)


class ManualClassifier(TinyClassifier):
    """TinyClassifier under manual optimisation: training_step steps the optimizer itself."""

    def __init__(self) -> None:
        super().__init__(lr=0.05)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        opt.zero_grad()  # type: ignore[union-attr]
        self.manual_backward(loss)
        opt.step()  # type: ignore[union-attr]
        return loss


class DictData(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self) -> None:
        self.data = blobs(64)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = self.data[i]
        return {"x": x, "y": y}


def fit(root: Path, model: pl.LightningModule, monitor: UpdateRatioMonitor | None, data: Any = None,
        **kw: Any) -> pl.Trainer:
    kw.setdefault("max_steps", 6)
    trainer = fast_trainer(root, callbacks=[monitor] if monitor else [], max_epochs=-1, **kw)
    trainer.fit(model, loader(data if data is not None else blobs(64), batch_size=16))
    return trainer


def finding(monitor: UpdateRatioMonitor, key: str) -> Any:
    return monitor._findings[key]


@pytest.mark.parametrize(("accumulate", "manual"), [(1, False), (2, False), (1, True)])
def test_ratio_of_the_first_sgd_step_equals_the_hand_computed_one(
    tmp_path: Path, accumulate: int, manual: bool
) -> None:
    torch.manual_seed(0)
    model = ManualClassifier() if manual else TinyClassifier(lr=0.05)
    data = blobs(64)
    # Oracle in plain PyTorch: the first optimizer step applies -lr * (mean gradient of the
    # `accumulate` micro-batches, each loss divided by `accumulate` as Lightning does).
    oracle = TinyClassifier()
    oracle.load_state_dict(model.state_dict())
    assert torch.equal(oracle.net[0].weight, model.net[0].weight)
    for i in range(accumulate):
        x, y = data.tensors[0][16 * i : 16 * (i + 1)], data.tensors[1][16 * i : 16 * (i + 1)]
        (nn.functional.cross_entropy(oracle(x), y) / accumulate).backward()
    expected = {}
    for layer in ("net.0", "net.2"):
        params = [p for n, p in oracle.named_parameters() if n.startswith(layer + ".")]
        update = math.sqrt(sum((0.05 * p.grad).pow(2).sum().item() for p in params))  # type: ignore[operator]
        weight = math.sqrt(sum(p.detach().pow(2).sum().item() for p in params))
        expected[layer] = math.log10(update / weight)

    monitor = UpdateRatioMonitor(every_n_steps=1, activations=False)
    fit(tmp_path, model, monitor, data, max_steps=2, accumulate_grad_batches=accumulate)
    ea = read_events(tmp_path / "run")
    for layer, value in expected.items():
        events = ea.Scalars(f"{TAG}/{layer}/log10_ratio")
        assert [e.step for e in events] == [0, 1]
        assert events[0].value == pytest.approx(value, abs=1e-4)
        assert -4.0 < value < -1.0  # a sane SGD step: near the healthy 1e-3


def test_frozen_layer_is_flagged_as_not_learning(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyClassifier(lr=0.05)
    model.net[0].requires_grad_(False)
    monitor = UpdateRatioMonitor(every_n_steps=1, patience=3, on_fail="ignore")
    fit(tmp_path, model, monitor)
    f = finding(monitor, "ratio")
    assert f.status == "warn"
    assert "net.0 (-12.0)" in f.summary and "requires_grad=False" in f.summary
    assert "net.2" not in f.summary
    assert f.values["not_learning_layers"] == 1.0 and f.values["exploding_layers"] == 0.0
    ea = read_events(tmp_path / "run")
    assert scalar_values(ea, f"{TAG}/net.0/log10_ratio") == [-12.0] * 6
    assert all(-4.0 < v < -1.0 for v in scalar_values(ea, f"{TAG}/net.2/log10_ratio"))


def test_freeze_on_purpose_is_not_flagged_with_include_frozen_false(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TinyClassifier(lr=0.05)
    model.net[0].requires_grad_(False)
    monitor = UpdateRatioMonitor(every_n_steps=1, include_frozen=False, on_fail="ignore")
    fit(tmp_path, model, monitor, max_steps=4)
    assert finding(monitor, "ratio").status == "pass"
    assert "net.0/log10_ratio" not in str(read_events(tmp_path / "run").Tags()["scalars"])


def test_dead_relus_from_a_huge_negative_bias_are_flagged(tmp_path: Path) -> None:
    torch.manual_seed(0)
    monitor = UpdateRatioMonitor(every_n_steps=2, patience=3, on_fail="ignore")
    fit(tmp_path, DeadReluClassifier(), monitor)
    acts = finding(monitor, "activations")
    assert acts.status == "warn"
    assert "net.1 (1.0)" in acts.summary and "dead" in acts.summary
    assert acts.values["dead_layers"] == 1.0
    ea = read_events(tmp_path / "run")
    events = ea.Scalars(f"{TAG}/net.1/dead_fraction")
    assert [e.step for e in events] == [0, 1, 2, 4]  # dense at the start, then every 2 steps
    assert [e.value for e in events] == [1.0, 1.0, 1.0, 1.0]
    # No gradient reaches the first layer through dead units: it is not learning either.
    ratio = finding(monitor, "ratio")
    assert ratio.status == "warn" and "net.0" in ratio.summary


def test_healthy_model_passes_and_draws_the_ratio_chart(tmp_path: Path) -> None:
    torch.manual_seed(0)
    monitor = UpdateRatioMonitor(every_n_steps=2, plot_every_n_samples=2)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        fit(tmp_path, TinyClassifier(lr=0.05), monitor, max_steps=10)
    assert not [w for w in record if issubclass(w.category, RecipeWarning)]
    ratio, acts = finding(monitor, "ratio"), finding(monitor, "activations")
    assert ratio.status == "pass", ratio.summary
    assert acts.status == "pass", acts.summary
    assert ratio.values["layers"] == 2.0 and ratio.values["samples"] == 6.0  # steps 0, 1, 2, 4, 6, 8
    assert -4.0 < ratio.values["min_log10_ratio"] <= ratio.values["max_log10_ratio"] < -1.0
    ea = read_events(tmp_path / "run")
    dead = scalar_values(ea, f"{TAG}/net.1/dead_fraction")
    assert len(dead) == 6 and max(dead) < 0.5
    images = ea.Images(f"{TAG}/ratio_chart")
    assert [im.step for im in images] == [1, 4, 8]  # every 2nd sample (the last is also the end)
    assert images[-1].width == FIGURE_SHAPE[1] and images[-1].height >= FIGURE_SHAPE[0]  # legend rows below
    chart = monitor.ratio_chart()  # what the last picture shows: the ratios themselves on a log axis
    assert chart.axes[0].get_yscale() == "log"
    assert {"net.0", "net.2", "healthy, around 1e-3"} <= set(chart.axes[0].get_legend_handles_labels()[1])


class HugeLayerClassifier(TinyClassifier):
    """Planted: the first layer's weights a million times too large (a bad init)."""

    def __init__(self, scale: float = 1e6, act: nn.Module | None = None) -> None:
        super().__init__(lr=0.05)
        self.net[1] = act if act is not None else nn.ReLU()
        with torch.no_grad():
            self.net[0].weight.mul_(scale)


def test_a_layer_a_million_times_too_large_is_caught_in_ten_steps(tmp_path: Path) -> None:
    # At the default every_n_steps=100 a 10-step run used to give 1 sample (a skip); now steps
    # 0, 1, 2, 4, 8 are measured.
    torch.manual_seed(0)
    monitor = UpdateRatioMonitor(on_fail="ignore")
    fit(tmp_path / "huge", HugeLayerClassifier(), monitor, max_steps=10)
    ratio = finding(monitor, "ratio")
    # Its huge activations make the next layer's updates overwhelm its weights: a fail in 10 steps.
    assert ratio.status == "fail" and "exploding" in ratio.summary and "net.2" in ratio.summary, ratio.summary
    assert ratio.values["samples"] == 3.0  # flagged as soon as patience=3 samples (steps 0, 1, 2) agree
    steps = [e.step for e in read_events(tmp_path / "huge" / "run").Scalars(f"{TAG}/net.0/log10_ratio")]
    assert steps == [0, 1, 2, 4, 8]
    # The same 10 steps of a healthy model pass at the defaults.
    torch.manual_seed(0)
    healthy = UpdateRatioMonitor(on_fail="ignore")
    fit(tmp_path / "ok", TinyClassifier(lr=0.05), healthy, max_steps=10)
    assert finding(healthy, "ratio").status == "pass", finding(healthy, "ratio").summary


@pytest.mark.parametrize("act", [nn.GELU(), nn.SiLU(), nn.Softplus()], ids=["gelu", "silu", "softplus"])
def test_smooth_activations_are_measured_by_their_input(tmp_path: Path, act: nn.Module) -> None:
    torch.manual_seed(0)
    dead_model = HugeLayerClassifier(scale=1.0, act=act)
    with torch.no_grad():
        dead_model.net[0].bias.fill_(-100.0)  # planted: every unit far left, no gradient passes
    monitor = UpdateRatioMonitor(every_n_steps=1, on_fail="ignore")
    fit(tmp_path / "dead", dead_model, monitor)
    acts = finding(monitor, "activations")
    assert acts.status == "warn" and "net.1 (1.0)" in acts.summary, acts.summary
    torch.manual_seed(0)
    healthy = UpdateRatioMonitor(every_n_steps=1, on_fail="ignore")
    fit(tmp_path / "ok", HugeLayerClassifier(scale=1.0, act=type(act)()), healthy)
    acts = finding(healthy, "activations")
    assert acts.status == "pass" and acts.values["activation_layers"] == 1.0, acts.summary
    dead = scalar_values(read_events(tmp_path / "ok" / "run"), f"{TAG}/net.1/dead_fraction")
    assert len(dead) == 6 and max(dead) < 0.5


class TinyGPT2(pl.LightningModule):
    """A real Hugging Face GPT-2 from a tiny config: its MLPs use ``NewGELUActivation``, not ``nn.GELU``."""

    def __init__(self, fc_bias: float | None = None) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0)
        self.model = GPT2LMHeadModel(config)
        if fc_bias is not None:  # planted: every MLP unit far left of the GELU, no gradient passes
            with torch.no_grad():
                for block in self.model.transformer.h:
                    block.mlp.c_fc.bias.fill_(fc_bias)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        (tokens,) = batch
        loss: torch.Tensor = self.model(input_ids=tokens, labels=tokens).loss
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def test_hugging_face_gpt2_activations_are_measured(tmp_path: Path) -> None:
    pytest.importorskip("transformers")
    tokens = torch.utils.data.TensorDataset(torch.randint(0, 50, (64, 16), generator=torch.Generator().manual_seed(0)))
    torch.manual_seed(0)
    healthy = UpdateRatioMonitor(every_n_steps=1, on_fail="ignore")
    fast_trainer(tmp_path / "ok", callbacks=[healthy], max_steps=6, max_epochs=-1).fit(TinyGPT2(), loader(tokens))
    acts = finding(healthy, "activations")
    assert acts.status == "pass" and acts.values["activation_layers"] == 2.0, acts.summary
    torch.manual_seed(0)
    dead = UpdateRatioMonitor(every_n_steps=1, on_fail="ignore")
    fast_trainer(tmp_path / "dead", callbacks=[dead], max_steps=6, max_epochs=-1).fit(TinyGPT2(-100.0), loader(tokens))
    acts = finding(dead, "activations")
    assert acts.status == "warn" and "mlp.act (1.0)" in acts.summary, acts.summary


def test_saturated_tanh_is_measured_and_flagged_on_dict_batches(tmp_path: Path) -> None:
    torch.manual_seed(0)
    monitor = UpdateRatioMonitor(every_n_steps=1, on_fail="ignore")
    fit(tmp_path, TanhClassifier(scale=200.0), monitor, DictData(), max_steps=3)
    ea = read_events(tmp_path / "run")
    assert min(scalar_values(ea, f"{TAG}/net.1/saturated_fraction")) > 0.9
    assert finding(monitor, "activations").status == "warn"

    torch.manual_seed(0)
    healthy = UpdateRatioMonitor(every_n_steps=1, on_fail="ignore")
    fit(tmp_path / "ok", TanhClassifier(scale=0.3), healthy, DictData(), max_steps=3)
    ea = read_events(tmp_path / "ok" / "run")
    assert max(scalar_values(ea, f"{TAG}/net.1/saturated_fraction")) < 0.1
    assert finding(healthy, "activations").status == "pass"


def test_exploding_ratio_fails_and_raises_when_asked(tmp_path: Path) -> None:
    torch.manual_seed(0)
    monitor = UpdateRatioMonitor(every_n_steps=1, patience=2, max_ratio=1e-3, on_fail="raise")
    with pytest.raises(RecipeCheckError, match="exploding"):
        fit(tmp_path, TinyClassifier(lr=5.0), monitor)
    assert finding(monitor, "ratio").status == "fail"
    assert not monitor._watch.handles and monitor._snapshot is None


def test_no_activation_modules_and_too_short_runs_skip(tmp_path: Path) -> None:
    model = TinyClassifier()
    model.net = nn.Sequential(nn.Linear(8, 4))
    monitor = UpdateRatioMonitor(every_n_steps=50)
    fit(tmp_path, model, monitor, max_steps=2)  # samples at steps 0 and 1: fewer than patience=3
    acts, ratio = finding(monitor, "activations"), finding(monitor, "ratio")
    assert acts.status == "skip" and "F.relu" in acts.summary
    assert ratio.status == "skip" and "every_n_steps" in ratio.advice


def test_seeded_run_is_bit_identical_with_and_without_the_monitor(tmp_path: Path) -> None:
    def run(monitor: UpdateRatioMonitor | None, sub: str) -> dict[str, torch.Tensor]:
        pl.seed_everything(3)
        model = TinyClassifier(lr=0.1)
        model.net.insert(2, nn.Dropout(0.3))  # dropout uses the RNG on every step
        trainer = fast_trainer(tmp_path / sub, callbacks=[monitor] if monitor else [], max_steps=8,
                               max_epochs=-1, deterministic=True)
        trainer.fit(model, loader(blobs(64), batch_size=16, shuffle=True))
        return model.state_dict()

    base = run(None, "bare")
    watched = run(UpdateRatioMonitor(every_n_steps=1, on_fail="ignore"), "watched")
    assert base.keys() == watched.keys()
    for key in base:
        assert torch.equal(base[key], watched[key]), key


def test_state_dict_round_trip_keeps_the_capped_history() -> None:
    monitor = UpdateRatioMonitor(every_n_steps=1, history_size=3)
    monitor.ratio_steps.extend([0, 1, 2, 3])
    monitor.ratios["a"] = deque([-3.0, -3.1, -3.2, -3.3], maxlen=3)
    state = monitor.state_dict()
    assert state["ratio_steps"] == [1, 2, 3] and state["ratios"] == {"a": [-3.1, -3.2, -3.3]}
    other = UpdateRatioMonitor(every_n_steps=1, history_size=3)
    other.load_state_dict(state)
    assert list(other.ratio_steps) == [1, 2, 3] and list(other.ratios["a"]) == [-3.1, -3.2, -3.3]
    assert other.ratio_steps.maxlen == 3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_steps": 0}, r"UpdateRatioMonitor\(every_n_steps=0\): every_n_steps must be"),
        ({"min_ratio": 0.1, "max_ratio": 0.01}, r"UpdateRatioMonitor\(min_ratio=0.1\): min_ratio must be below"),
        ({"max_dead_fraction": 1.5}, r"max_dead_fraction=1.5"),
        ({"patience": 0}, r"patience=0"),
        ({"on_fail": "explode"}, r"on_fail='explode'"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        UpdateRatioMonitor(**kwargs)


def test_wrong_types_name_the_argument() -> None:
    with pytest.raises(TypeError, match=r"activations='yes'"):
        UpdateRatioMonitor(activations="yes")  # type: ignore[arg-type]


def test_dead_relus_flagged_under_ddp_spawn(tmp_path: Path) -> None:
    torch.manual_seed(0)
    monitor = UpdateRatioMonitor(every_n_steps=1, patience=2, on_fail="ignore")
    trainer = fast_trainer(tmp_path, callbacks=[monitor, RecipeReport(print_report=False)], max_steps=3,
                           max_epochs=-1, devices=2, strategy="ddp_spawn")
    trainer.fit(DeadReluClassifier(), loader(blobs(64), batch_size=8))
    ea = read_events(tmp_path / "run")
    assert scalar_values(ea, f"{TAG}/net.1/dead_fraction") == [1.0, 1.0, 1.0]
    assert scalar_values(ea, f"{TAG}/net.0/log10_ratio") == [-12.0, -12.0, -12.0]
    report = json.loads((tmp_path / "run" / "recipe_report.json").read_text())
    statuses = sorted(f["status"] for f in report["findings"] if f["check"] == "UpdateRatioMonitor")
    assert statuses == ["warn", "warn"]


def test_a_sampled_step_writes_its_ratios_and_activations_as_one_tensorboard_event(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    torch.manual_seed(0)
    fit(tmp_path, TinyClassifier(lr=0.05), UpdateRatioMonitor(every_n_steps=2), max_steps=10)
    events = [e for path in sorted((tmp_path / "run").glob("events.out.tfevents.*"))
              for e in EventFileLoader(str(path)).Load()
              if any(v.tag.endswith(("log10_ratio", "dead_fraction")) for v in e.summary.value)]
    tags = [sorted(v.tag.removeprefix(f"{TAG}/") for v in e.summary.value) for e in events]
    assert [e.step for e in events] == [0, 1, 2, 4, 6, 8]  # one event per sample (was two)
    assert tags == [["net.0/log10_ratio", "net.1/dead_fraction", "net.2/log10_ratio"]] * 6
    ea = read_events(tmp_path / "run")
    assert [e.step for e in ea.Scalars(f"{TAG}/net.0/log10_ratio")] == [0, 1, 2, 4, 6, 8]
