"""BatchIndependenceCheck on a real Trainer: planted batch mixing caught, healthy models passed."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from recipe_callbacks import RecipeCheckError, RecipeWarning
from recipe_callbacks.batch_independence_check import BatchIndependenceCheck
from tests.support import TinyClassifier, blobs, fast_trainer, finding_values, loader, read_events, text_values

TAG = "recipe.batch_independence_check"


class ViewMixer(TinyClassifier):
    """Planted bug: ``view`` instead of ``transpose``: the hidden (B, H) is reread as (H, B)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net[1](self.net[0](x))  # (B, H)
        h = h.view(h.shape[1], h.shape[0]).t()  # (B, H) again, but rows now hold pieces of other samples
        return self.net[2](h)


class HandBatchNorm(TinyClassifier):
    """Planted bug: a hand-written batch normalisation in forward, with the batch mean and std."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net[0](x)
        h = (h - h.mean(0)) / (h.std(0) + 1e-5)
        return self.net[2](self.net[1](h))


class WithBatchNorm(TinyClassifier):
    """Healthy: nn.BatchNorm1d (mixes the batch in train mode, by design) and dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 4)
        )


class DictClassifier(TinyClassifier):
    """Healthy MLP whose batches are dicts."""

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return nn.functional.cross_entropy(self(batch["x"]), batch["y"])


class DictData(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self) -> None:
        self.data = blobs()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = self.data[i]
        return {"x": x, "y": y}


class TokenBag(pl.LightningModule):
    """Token ids (B, T) -> embedding -> mean over time -> logits; ``leak`` adds the batch mean."""

    def __init__(self, leak: bool = False, embed: bool = True) -> None:
        super().__init__()
        self.leak, self.embed = leak, embed
        self.emb = nn.Embedding(12, 8) if embed else nn.Linear(12, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        e = self.emb(ids) if self.embed else self.emb(nn.functional.one_hot(ids, 12).float())  # (B, T, C)
        h = e.mean(1)  # (B, C)
        if self.leak:
            h = h + h.mean(0, keepdim=True)
        return self.head(h)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        ids, y = batch
        return nn.functional.cross_entropy(self(ids), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def tokens() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randint(0, 12, (32, 6), generator=g), torch.randint(0, 3, (32,), generator=g))


def fit(tmp_path: Path, model: pl.LightningModule, data: Any, **kw: Any) -> BatchIndependenceCheck:
    check = BatchIndependenceCheck(on_fail="ignore", **kw)
    trainer = fast_trainer(tmp_path, max_steps=2, callbacks=[check])
    trainer.fit(model, data if isinstance(data, DataLoader) else loader(data))
    return check


@pytest.mark.parametrize("model", [ViewMixer(), HandBatchNorm()], ids=["view", "hand_batchnorm"])
def test_planted_batch_mixing_is_caught_and_the_first_mixing_layer_named(tmp_path: Path, model: Any) -> None:
    check = fit(tmp_path, model, blobs())
    (finding,) = check.findings
    assert finding.status == "fail"
    assert "output of sample 0 depends on sample(s)" in finding.summary
    ea = read_events(tmp_path / "run")
    shown = finding_values(ea, TAG)
    assert shown["max_leak"] > 0.05
    assert shown["leaking_pairs"] >= 4
    assert f"{TAG}/dependency_matrix" in ea.Tags()["images"]
    (scan,) = text_values(ea, f"{TAG}/layer_scan")
    if isinstance(model, ViewMixer):  # mixed between the ReLU (clean) and the last Linear
        assert "at the output of `net.2` (Linear); the output of `net.1` (ReLU) before it is clean" in finding.summary
        assert "| 1 | `net.1` | ReLU | 0 |" in scan
    else:  # the hand-written normalisation sits between net.0 and net.1
        assert "at the output of `net.1` (ReLU); the output of `net.0` (Linear) before it is clean" in finding.summary
    assert finding.values["cost_steps"] > 0


@pytest.mark.parametrize(
    ("model", "data"),
    [(TinyClassifier(), blobs()), (WithBatchNorm(), blobs()), (DictClassifier(), DictData())],
    ids=["mlp", "batchnorm1d", "dict_batch"],
)
def test_healthy_models_pass(tmp_path: Path, model: pl.LightningModule, data: Any) -> None:
    check = fit(tmp_path, model, data)
    (finding,) = check.findings
    assert finding.status == "pass", finding.summary
    assert finding.values["max_leak"] == 0.0 and finding.values["num_probes"] == 4
    # one forward and four backward passes over the batch: (1 + 2 * 4) / 3 training steps
    assert finding.values["cost_steps"] == pytest.approx(3.0)
    if isinstance(model, WithBatchNorm):
        assert "1 BatchNorm layer(s) in eval mode" in finding.summary
    assert check.early_finished
    assert finding_values(read_events(tmp_path / "run"), TAG)["cost_steps"] == pytest.approx(3.0, rel=1e-3)


@pytest.mark.parametrize(
    ("leak", "embed", "status", "how"),
    [
        (False, True, "pass", "gradients at the output of embedding `emb`"),
        (True, True, "fail", "gradients at the output of embedding `emb`"),
        (True, False, "fail", "perturbing the input"),  # ids reach no nn.Embedding: perturbation fallback
        (False, False, "pass", "perturbing the input"),
    ],
)
def test_token_id_models(tmp_path: Path, leak: bool, embed: bool, status: str, how: str) -> None:
    check = fit(tmp_path, TokenBag(leak, embed), tokens())
    (finding,) = check.findings
    assert finding.status == status, finding.summary
    assert how in finding.summary
    if leak and embed:
        assert "at the output of `head` (Linear); the output of `emb` (Embedding) before it is clean" in finding.summary


def test_on_fail_raise_stops_training(tmp_path: Path) -> None:
    check = BatchIndependenceCheck(on_fail="raise")
    trainer = fast_trainer(tmp_path, max_steps=2, callbacks=[check])
    with pytest.raises(RecipeCheckError, match="samples of the batch mix"):
        trainer.fit(ViewMixer(), loader(blobs()))


def test_warns_by_default(tmp_path: Path) -> None:
    trainer = fast_trainer(tmp_path, max_steps=1, callbacks=[BatchIndependenceCheck()])
    with pytest.warns(RecipeWarning, match="BatchIndependenceCheck"):
        trainer.fit(HandBatchNorm(), loader(blobs()))


class NoTensorOut(TinyClassifier):
    def forward(self, x: torch.Tensor) -> Any:
        return {"not": "a tensor"}

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self.net(x), y)


class IgnoresInput(TinyClassifier):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(torch.zeros_like(x))


def test_output_that_ignores_the_input_is_a_warning_not_a_pass(tmp_path: Path) -> None:
    (finding,) = fit(tmp_path, IgnoresInput(), blobs()).findings
    assert finding.status == "warn" and "do not depend on any input" in finding.summary


@pytest.mark.parametrize(
    ("model", "batch_size", "kw", "reason"),
    [
        (TinyClassifier(), 1, {}, "1 sample(s)"),
        (NoTensorOut(), 8, {}, "no floating-point tensor"),
        (TinyClassifier(), 8, {"input_key": "nope"}, "could not find the input"),
    ],
    ids=["batch_of_one", "no_tensor_output", "bad_input_key"],
)
def test_cannot_run_skips_without_crashing(
    tmp_path: Path, model: pl.LightningModule, batch_size: int, kw: dict[str, Any], reason: str
) -> None:
    check = fit(tmp_path, model, loader(blobs(), batch_size=batch_size), **kw)
    (finding,) = check.findings
    assert finding.status == "skip" and reason in finding.summary


def test_resumed_run_does_not_check_again(tmp_path: Path) -> None:
    first = BatchIndependenceCheck(on_fail="ignore")
    trainer = fast_trainer(tmp_path, max_steps=2, callbacks=[first])
    trainer.fit(TinyClassifier(), loader(blobs()))
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    resumed = BatchIndependenceCheck(on_fail="ignore")
    calls: list[int] = []
    resumed._measure = lambda *a: calls.append(1)  # type: ignore[method-assign]
    trainer = fast_trainer(tmp_path, max_steps=3, callbacks=[resumed])
    trainer.fit(ViewMixer(), loader(blobs()), ckpt_path=tmp_path / "last.ckpt")
    assert calls == []
    assert [f.status for f in resumed.findings] == ["pass"]  # the Finding came back from the checkpoint
    assert resumed.early_finished


class DropoutBatchNormNet(TinyClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 4))


def seeded_state(tmp_path: Path, callbacks: list[pl.Callback]) -> dict[str, torch.Tensor]:
    pl.seed_everything(7)
    model = DropoutBatchNormNet()
    trainer = fast_trainer(tmp_path, max_steps=4, callbacks=callbacks, logger=False)
    trainer.fit(model, loader(blobs(), shuffle=True))
    return model.state_dict()


def test_seeded_run_ends_with_the_same_weights_and_buffers(tmp_path: Path) -> None:
    plain = seeded_state(tmp_path / "plain", [])
    check = BatchIndependenceCheck(on_fail="ignore", num_probes=2)
    checked = seeded_state(tmp_path / "checked", [check])
    assert check.findings[0].status == "pass"
    assert plain.keys() == checked.keys()
    for name, value in plain.items():
        assert torch.equal(value, checked[name]), name


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"num_probes": 0}, ValueError, r"BatchIndependenceCheck\(num_probes=0\)"),
        ({"max_dependency": -1.0}, ValueError, r"BatchIndependenceCheck\(max_dependency=-1.0\)"),
        ({"method": "magic"}, ValueError, r"BatchIndependenceCheck\(method='magic'\)"),
        ({"train_mode": "yes"}, TypeError, r"BatchIndependenceCheck\(train_mode='yes'\)"),
        ({"on_fail": "explode"}, ValueError, r"on_fail='explode'"),
    ],
)
def test_bad_arguments_name_the_argument(kw: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        BatchIndependenceCheck(**kw)


def test_eval_mode_option_still_catches_a_hand_written_batch_norm(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check = fit(tmp_path, HandBatchNorm(), blobs(), train_mode=False)
    assert check.findings[0].status == "fail" and "eval mode" in check.findings[0].summary
