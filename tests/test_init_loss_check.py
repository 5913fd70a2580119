"""InitLossCheck on real Trainers: the planted bugs of recipe rows 2d/2e caught, healthy models passed."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from recipe_callbacks import DataInspector, InitLossCheck, RecipeCheckError, RecipeWarning
from recipe_callbacks.core.init_loss import binary_entropy
from tests.support import TinyClassifier, blobs, fast_trainer, finding_values, loader, read_events, text_values

TAG = "recipe.init_loss_check"


@pytest.fixture(autouse=True)
def seeded() -> None:
    """Every test starts from the same weights, whatever ran before it in the same process."""
    pl.seed_everything(0, verbose=False)


def zero_vs_rest() -> TensorDataset:
    """Digits as 64 pixels in [0, 1], target 1.0 for the digit 0: a 1:9 imbalanced binary task."""
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    return TensorDataset(x, torch.tensor(data.target == 0, dtype=torch.float32))


class ZeroDetector(pl.LightningModule):
    """One logit per image, (N,) after squeeze; BCE."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.binary_cross_entropy_with_logits(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.binary_cross_entropy_with_logits(self(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


class DictRegressor(pl.LightningModule):
    """Dict batches {"features", "target"} with targets around 50; MSE."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 16), nn.Tanh())
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return nn.functional.mse_loss(self(batch["features"]), batch["target"])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=1e-3)


class DictData(Dataset[dict[str, torch.Tensor]]):
    def __init__(self, n: int = 64) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 4, generator=g)
        self.y = 50.0 + self.x[:, :1] + 0.5 * torch.randn(n, 1, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"features": self.x[i], "target": self.y[i]}


class DirectNetClassifier(TinyClassifier):
    """training_step calls self.net(x), not self(x): the module hook sees nothing."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)


class LabelReader(TinyClassifier):
    """Its input carries the one-hot label and its final layer reads it: far below chance at init."""

    def __init__(self) -> None:
        super().__init__(in_dim=4, num_classes=4)
        self.net = nn.Sequential(nn.Linear(4, 4))
        with torch.no_grad():
            self.net[0].weight.copy_(10 * torch.eye(4))
            self.net[0].bias.zero_()


class Pair:
    """A batch type no check can read without help."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y


def collate_pairs(items: list[tuple[torch.Tensor, torch.Tensor]]) -> Pair:
    return Pair(torch.stack([i[0] for i in items]), torch.stack([i[1] for i in items]))


class PairClassifier(TinyClassifier):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self(batch.x), batch.y)

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        return nn.functional.cross_entropy(self(batch.x), batch.y)


def fit(
    root: Path, model: pl.LightningModule, train: Any, callbacks: list[Any], val: Any = None, **kw: Any
) -> pl.Trainer:
    trainer = fast_trainer(root, max_steps=kw.pop("max_steps", 2), callbacks=callbacks, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecipeWarning)
        trainer.fit(model, train, val)
    return trainer


def finding(cb: InitLossCheck, status: str | None = None) -> Any:
    main = [f for f in cb.findings if "loss at init" in f.summary or f.status == "skip"]
    assert main, cb.findings
    if status is not None:
        assert main[-1].status == status, main[-1].message()
    return main[-1]


def test_healthy_classifier_passes_and_logs_what_it_judged(tmp_path: Path) -> None:
    pl.seed_everything(0)
    cb = InitLossCheck()
    fit(tmp_path, TinyClassifier(), loader(blobs()), [cb])
    f = finding(cb, "pass")
    assert f.values["expected"] == pytest.approx(math.log(4))
    assert f.values["band_low"] <= f.values["observed"] <= f.values["band_high"]
    assert f.values["cost_steps"] == 0.0
    assert "final layer 'net.2'" in f.summary
    ea = read_events(tmp_path / "run")
    # one-time values come back from the check's text, not from single-point scalar charts
    shown = finding_values(ea, TAG)
    assert shown["observed"] == pytest.approx(f.values["observed"], rel=1e-3)
    assert shown["expected"] == pytest.approx(math.log(4), rel=1e-3)
    assert not [t for t in ea.Tags()["scalars"] if t.startswith(TAG)]
    assert "| 3 |" in text_values(ea, f"{TAG}/per_class")[-1]
    assert {f"{TAG}/predicted_vs_prior", f"{TAG}/loss_at_init"} <= set(ea.Tags()["images"])
    # the observed loss is the loss training_step computed at step 0 on the same batch
    assert f.values["observed"] == pytest.approx(f.values["step_loss"], rel=1e-5)


def test_final_layer_with_large_weights_fails(tmp_path: Path) -> None:
    pl.seed_everything(0)
    model = TinyClassifier()
    with torch.no_grad():
        model.net[2].weight.mul_(20.0)  # planted bug: a confident, wrong init
    cb = InitLossCheck()
    fit(tmp_path, model, loader(blobs()), [cb])
    f = finding(cb, "fail")
    assert f.values["ratio"] > 1.25
    assert "'net.2'" in f.summary and "confident and wrong" in f.summary
    assert "init" in f.advice


def test_on_fail_raise_stops_a_confident_wrong_init(tmp_path: Path) -> None:
    model = TinyClassifier()
    with torch.no_grad():
        model.net[2].weight.mul_(20.0)
    trainer = fast_trainer(tmp_path, max_steps=2, callbacks=[InitLossCheck(on_fail="raise")])
    with pytest.raises(RecipeCheckError, match="confident and wrong"):
        trainer.fit(model, loader(blobs()))


def test_default_bias_on_a_1_to_9_task_warns_and_fix_bias_reaches_the_binary_entropy(tmp_path: Path) -> None:
    data = zero_vs_rest()
    positive_rate = float(data.tensors[1].mean())
    pl.seed_everything(0)
    plain = InitLossCheck()
    with pytest.warns(RecipeWarning, match="fix_bias=True"):
        trainer = fast_trainer(tmp_path / "plain", max_steps=1, callbacks=[plain])
        trainer.fit(ZeroDetector(), loader(data, 128, shuffle=True))
    f = finding(plain, "warn")
    assert f.values["observed"] == pytest.approx(math.log(2), rel=0.1)
    assert f.values["ratio"] > 1.5

    pl.seed_everything(0)
    fixer = InitLossCheck(fix_bias=True)
    model = ZeroDetector()
    fit(tmp_path / "fixed", model, loader(data, 128, shuffle=True), [fixer], max_steps=1)
    judged = finding(fixer, "pass")
    expected = binary_entropy(positive_rate)
    assert abs(judged.values["observed"] - expected) / expected < fixer.tolerance
    fixed = next(x for x in fixer.findings if x.summary.startswith("fix_bias set"))
    assert "changed the model on purpose" in fixed.summary
    assert fixed.values["fix_bias/loss_after"] < fixed.values["fix_bias/loss_before"]
    # the expected loss on the judged batches (the cross-entropy of their label mix against the prior)
    assert fixed.values["fix_bias/loss_after"] == pytest.approx(fixed.values["fix_bias/expected"], rel=0.05)
    assert fixed.values["fix_bias/expected"] == pytest.approx(expected, rel=0.1)
    assert fixed.values["fix_bias/counted_samples"] == len(data)  # small set: counted whole
    ea = read_events(tmp_path / "fixed" / "run")
    shown = finding_values(ea, TAG)["fix_bias/loss_after"]
    assert shown == pytest.approx(fixed.values["fix_bias/loss_after"], rel=1e-3)


def test_fix_bias_sets_the_log_odds_on_the_final_layer(tmp_path: Path) -> None:
    data = zero_vs_rest()
    p = float(data.tensors[1].mean())
    model = ZeroDetector()
    fit(tmp_path, model, loader(data, 256), [InitLossCheck(fix_bias=True)], max_steps=1)
    # one SGD step at lr 0.01 moves the bias a little; the log-odds is about -2.2
    assert float(model.net[2].bias.detach()) == pytest.approx(math.log(p / (1 - p)), abs=0.05)


def test_regression_with_dict_batches_default_bias_warns_and_fix_bias_passes(tmp_path: Path) -> None:
    pl.seed_everything(0)
    plain = InitLossCheck()
    fit(tmp_path / "plain", DictRegressor(), loader(DictData(), 16), [plain])
    f = finding(plain, "warn")
    assert f.values["observed"] > 1000  # predicting ~0 for targets around 50
    assert "regression" in f.summary
    pl.seed_everything(0)
    fixer = InitLossCheck(fix_bias=True)
    fit(tmp_path / "fixed", DictRegressor(), loader(DictData(), 16), [fixer])
    judged = finding(fixer, "pass")
    assert judged.values["observed"] < 5
    assert "'head'" in judged.summary


def test_fallback_when_training_step_does_not_call_forward(tmp_path: Path) -> None:
    pl.seed_everything(0)
    cb = InitLossCheck(num_batches=2)
    fit(tmp_path, DirectNetClassifier(), loader(blobs()), [cb])
    f = finding(cb, "pass")
    assert "no-grad forward passes" in f.summary
    assert f.values["samples"] == 32  # the first batch and one more
    assert f.values["cost_steps"] == pytest.approx(2 / 3)
    assert "'net.2'" in f.summary


def test_no_observer_effect_on_a_seeded_run(tmp_path: Path) -> None:
    def weights(callbacks: list[Any], root: Path) -> list[torch.Tensor]:
        pl.seed_everything(3)
        model = DirectNetClassifier()  # also exercises the fallback forward passes
        fit(root, model, loader(blobs(), shuffle=True), callbacks, loader(blobs(seed=1)), max_steps=6)
        return [p.detach().clone() for p in model.parameters()]

    inspector = DataInspector()
    with_check = weights([InitLossCheck(), inspector], tmp_path / "a")
    without = weights([], tmp_path / "b")
    assert len(inspector.findings) == 3  # labels, duplicates and the hardest samples after validation ran
    assert all(torch.equal(a, b) for a, b in zip(with_check, without, strict=True))


def test_a_model_that_already_knows_the_labels_is_far_too_low(tmp_path: Path) -> None:
    y = torch.arange(64) % 4
    data = TensorDataset(nn.functional.one_hot(y, 4).float(), y)
    cb = InitLossCheck()
    fit(tmp_path, LabelReader(), loader(data), [cb])
    f = finding(cb, "warn")
    assert f.values["observed"] < f.values["band_low"]
    assert "leak" in f.advice


def test_prior_from_data_inspector_sets_the_expected_loss(tmp_path: Path) -> None:
    y = torch.tensor([0] * 54 + [1] * 5 + [2] * 5)  # about 84% class 0
    x = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    inspector, cb = DataInspector(show_hardest=False, check_duplicates=False), InitLossCheck()
    pl.seed_everything(0)
    fit(tmp_path, TinyClassifier(num_classes=3), loader(TensorDataset(x, y), shuffle=True), [cb, inspector])
    f = finding(cb, "warn")
    assert "DataInspector's prior" in f.summary
    prior = inspector.class_prior()
    assert prior is not None and prior.tolist() == pytest.approx([54 / 64, 5 / 64, 5 / 64])
    assert f.values["expected"] < math.log(3) / 1.25


def test_overrides_task_num_classes_expected(tmp_path: Path) -> None:
    cb = InitLossCheck(task="multiclass", num_classes=4, expected=1.0, tolerance=0.1)
    fit(tmp_path, TinyClassifier(), loader(blobs()), [cb])
    f = finding(cb)
    assert f.values["expected"] == 1.0
    assert "expected= argument" in f.summary
    assert f.values["band_high"] == pytest.approx(1.1)


def test_unresolvable_batches_end_in_skips_not_a_crash(tmp_path: Path) -> None:
    data = blobs()
    train = loader(data, collate_fn=collate_pairs)
    cb, inspector = InitLossCheck(fix_bias=True), DataInspector()
    trainer = fast_trainer(tmp_path, max_steps=2, callbacks=[cb, inspector], limit_val_batches=1)
    trainer.fit(PairClassifier(), train, loader(data, collate_fn=collate_pairs))
    assert trainer.global_step == 2
    for check in (cb, inspector):
        assert check.findings and all(f.status == "skip" for f in check.findings)
        assert all("batch_to_xy" in f.advice for f in check.findings), [f.advice for f in check.findings]
    # given batch_to_xy, the same run is judged
    cb = InitLossCheck(batch_to_xy=lambda b: (b.x, b.y))
    fit(tmp_path / "given", PairClassifier(), train, [cb])
    assert finding(cb).status == "pass"


def test_unknown_task_is_a_skip_naming_task(tmp_path: Path) -> None:
    x, y = torch.randn(32, 8), torch.randn(32, 2)  # 4 logits against 2 float targets: nothing fits

    class Odd(TinyClassifier):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self(batch[0]).sum() * 0.0 + batch[1].sum() * 0.0

    cb = InitLossCheck()
    fit(tmp_path, Odd(), loader(TensorDataset(x, y)), [cb])
    f = finding(cb, "skip")
    assert "InitLossCheck(task=...)" in f.advice


def test_does_not_run_again_on_a_resumed_run(tmp_path: Path) -> None:
    trainer = fit(tmp_path / "first", TinyClassifier(), loader(blobs()), [InitLossCheck()], max_steps=2)
    ckpt = tmp_path / "first.ckpt"
    trainer.save_checkpoint(ckpt)
    model = TinyClassifier()
    with torch.no_grad():
        model.net[2].weight.mul_(20.0)  # would fail if judged; the checkpoint's weights replace it anyway
    cb = InitLossCheck()
    trainer = fast_trainer(tmp_path / "second", max_steps=4, callbacks=[cb])
    trainer.fit(model, loader(blobs()), ckpt_path=str(ckpt))
    assert [f.status for f in cb.findings] == ["pass"]  # restored from the checkpoint
    assert cb.early_finished
    assert f"{TAG}/finding/text_summary" not in read_events(tmp_path / "second" / "run").Tags()["tensors"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tolerance": -1.0}, ValueError, r"InitLossCheck\(tolerance=-1.0\): tolerance"),
        ({"task": "ranking"}, ValueError, r"InitLossCheck\(task='ranking'\): task"),
        ({"num_classes": 1}, ValueError, r"InitLossCheck\(num_classes=1\): num_classes"),
        ({"max_batches": 0}, ValueError, r"InitLossCheck\(max_batches=0\): max_batches"),
        ({"fix_bias": "yes"}, TypeError, r"InitLossCheck\(fix_bias='yes'\): fix_bias"),
        ({"final_layer": ""}, TypeError, r"InitLossCheck\(final_layer=''\): final_layer"),
        ({"on_fail": "explode"}, ValueError, r"InitLossCheck\(on_fail='explode'\): on_fail"),
    ],
)
def test_argument_errors_name_the_argument(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        InitLossCheck(**kwargs)


def test_final_layer_by_name(tmp_path: Path) -> None:
    cb = InitLossCheck(final_layer="net.2", fix_bias=True)
    fit(tmp_path, TinyClassifier(), loader(blobs()), [cb])
    assert "'net.2'" in finding(cb, "pass").summary
    missing = InitLossCheck(final_layer="nope", fix_bias=True)
    fit(tmp_path / "missing", TinyClassifier(), loader(blobs()), [missing])
    skipped = [f for f in missing.findings if f.status == "skip"]
    assert skipped and "InitLossCheck(final_layer=...)" in skipped[0].advice


def test_under_ddp_spawn_both_ranks_agree(tmp_path: Path) -> None:
    trainer = fast_trainer(
        tmp_path, max_steps=2, accelerator="cpu", devices=2, strategy="ddp_spawn",
        callbacks=[InitLossCheck(fix_bias=True), DataInspector(max_samples=200)],
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecipeWarning)
        trainer.fit(ZeroDetector(), loader(zero_vs_rest(), 64), loader(zero_vs_rest(), 256))
    ea = read_events(tmp_path / "run")
    shown = finding_values(ea, TAG)
    assert shown["samples"] == 128.0  # the first batch of both ranks, summed
    observed = shown["observed"]
    expected = binary_entropy(float(zero_vs_rest().tensors[1].mean()))
    assert abs(observed - expected) / expected < 0.25
    assert finding_values(ea, "recipe.data_inspector")["duplicates"] == 200.0  # val is the train set here


class TinyLM(pl.LightningModule):
    """(B, T) token ids -> (B, T, V) logits, nanoGPT's layout; cross-entropy over flattened tokens."""

    def __init__(self, vocab: int = 12) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 16)
        self.head = nn.Linear(16, vocab)
        nn.init.normal_(self.embed.weight, std=0.02)  # as nanoGPT does

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x).flatten(0, 1), y.flatten())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_sequence_logits_with_the_class_axis_last(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    uniform = torch.randint(0, 12, (32, 9), generator=g)
    pl.seed_everything(0)
    cb = InitLossCheck()
    fit(tmp_path / "uniform", TinyLM(), loader(TensorDataset(uniform[:, :-1], uniform[:, 1:]), 8), [cb])
    f = finding(cb, "pass")
    assert f.values["num_classes"] == 12 and f.values["expected"] == pytest.approx(math.log(12))
    # skewed tokens: most are token 0; fix_bias sets the 12 biases of the head
    skewed = torch.where(torch.rand(32, 9, generator=g) < 0.8, 0, uniform)
    fixer = InitLossCheck(fix_bias=True)
    model = TinyLM()
    fit(tmp_path / "skewed", model, loader(TensorDataset(skewed[:, :-1], skewed[:, 1:]), 8), [fixer], max_steps=1)
    fixed = next(x for x in fixer.findings if x.summary.startswith("fix_bias set"))
    assert "'head'" in fixed.summary
    assert fixed.values["fix_bias/loss_after"] < fixed.values["fix_bias/loss_before"]
    assert finding(fixer).status == "pass"


class NegatedRegressor(DictRegressor):
    """The head's output is negated after it: its bias does not move the prediction the way fix_bias assumes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.head(self.body(x))


def test_fix_bias_that_makes_the_loss_worse_is_put_back(tmp_path: Path) -> None:
    model = NegatedRegressor()
    initial = model.head.bias.detach().clone()
    cb = InitLossCheck(fix_bias=True)
    fit(tmp_path, model, loader(DictData(), 16), [cb], max_steps=1, limit_train_batches=1)
    fixed = next(x for x in cb.findings if x.summary.startswith("fix_bias"))
    assert fixed.status == "warn" and "put back" in fixed.summary
    assert fixed.values["fix_bias/loss_after"] > fixed.values["fix_bias/loss_before"]
    # one SGD step at lr 1e-3 moved it a little, from the initial bias, not from 50
    assert abs(float(model.head.bias.detach()) - float(initial)) < 1.0


class Peeker(pl.Callback):
    """Another callback that looks at the model (eval mode, no grad) at the start of the first step."""

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, i: int) -> None:
        from recipe_callbacks.plumbing.observe import observing

        with observing(pl_module):
            pl_module(batch[0] * 100.0)  # logits that would fail the check if they were judged


def test_other_callbacks_forward_passes_are_not_judged(tmp_path: Path) -> None:
    cb = InitLossCheck()
    fit(tmp_path, TinyClassifier(), loader(blobs()), [cb, Peeker()])
    f = finding(cb, "pass")
    assert f.values["observed"] == pytest.approx(f.values["step_loss"], rel=1e-5)


class CountedReads(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Blobs that count how often each sample is read."""

    def __init__(self) -> None:
        self.data = blobs()
        self.reads = [0] * len(self.data)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.reads[i] += 1
        return self.data[i]


class CountedForward(DirectNetClassifier):
    """DirectNetClassifier (the fallback: training_step does not call self(x)) counting forward calls."""

    def __init__(self) -> None:
        super().__init__()
        self.forward_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_calls += 1
        return super().forward(x)


@pytest.mark.parametrize("fix", [False, True], ids=["fallback", "fallback_and_fix_bias"])
def test_the_training_batches_are_read_once_and_shared(tmp_path: Path, fix: bool) -> None:
    # without the check: what one training step reads by itself
    bare = CountedReads()
    fit(tmp_path / "bare", CountedForward(), loader(bare), [], max_steps=1)
    data, model = CountedReads(), CountedForward()
    cb = InitLossCheck(fix_bias=fix, num_batches=2)
    fit(tmp_path / "checked", model, loader(data), [cb], max_steps=1)
    assert "no-grad forward passes" in finding(cb, "pass").summary
    # the counted prior, fix_bias and the fallback's second batch share one read of the data set
    # (max_batches=20 batches of 16 cover all 64 samples): every sample read once more than bare
    assert [a - b for a, b in zip(data.reads, bare.reads, strict=True)] == [1] * len(data)
    # fix_bias: num_batches forward before and after setting the bias; the fallback: num_batches
    assert model.forward_calls == (2 * 2 if fix else 0) + 2
