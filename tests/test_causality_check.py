"""CausalityCheck on a real Trainer: a mask off by one caught; a causal transformer and a GRU passed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from recipe_callbacks import RecipeCheckError
from recipe_callbacks.batch_independence_check import BatchIndependenceCheck
from recipe_callbacks.causality_check import CausalityCheck
from recipe_callbacks.core.pictures import FIGURE_SHAPE
from tests.support import TinyClassifier, blobs, fast_trainer, finding_values, loader, read_events, text_values

TAG = "recipe.causality_check"
VOCAB, T = 11, 12


class TinyGPT(pl.LightningModule):
    """One causal self-attention layer over token ids. ``diagonal=2`` is the planted bug: the mask
    ``triu(ones, diagonal)`` hides positions from ``t + diagonal`` on, so ``t`` sees ``t + 1``."""

    def __init__(self, diagonal: int = 1, embed: bool = True, dropout: float = 0.1) -> None:
        super().__init__()
        self.diagonal, self.embed = diagonal, embed
        self.wte = nn.Embedding(VOCAB, 16) if embed else nn.Linear(VOCAB, 16)
        self.wpe = nn.Embedding(T, 16)
        self.qkv = nn.Linear(16, 48)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(16, VOCAB)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        steps = idx.shape[1]
        tok = self.wte(idx) if self.embed else self.wte(F.one_hot(idx, VOCAB).float())  # (B, T, C)
        h = tok + self.wpe(torch.arange(steps, device=idx.device))
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        att = q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])  # (B, T, T)
        hidden = torch.triu(torch.ones(steps, steps, dtype=torch.bool, device=idx.device), self.diagonal)
        att = self.drop(att.masked_fill(hidden, float("-inf")).softmax(-1))
        return self.head(h + att @ v)  # (B, T, V)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x).flatten(0, 1), y.flatten())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class GRUTagger(pl.LightningModule):
    """Float sequences (B, T, 3) -> a GRU -> per-step logits (B, T, 2)."""

    def __init__(self, bidirectional: bool = False) -> None:
        super().__init__()
        self.gru = nn.GRU(3, 8, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(16 if bidirectional else 8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.gru(x)[0])

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x).flatten(0, 1), y.flatten())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


class ConvTagger(GRUTagger):
    """(B, C, T) sequences with time in dim 2; left padding is causal, symmetric padding is not."""

    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.pad = (2, 0) if causal else (1, 1)
        self.conv = nn.Conv1d(3, 2, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, self.pad))  # (B, 2, T)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)


class DictGPT(TinyGPT):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return F.cross_entropy(self(batch["input_ids"]).flatten(0, 1), batch["labels"].flatten())


def token_data() -> TensorDataset:
    ids = torch.randint(0, VOCAB, (32, T + 1), generator=torch.Generator().manual_seed(0))
    return TensorDataset(ids[:, :-1], ids[:, 1:])


def float_data(time_last: bool = False) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(32, T, 3, generator=g)
    return TensorDataset(x.transpose(1, 2) if time_last else x, torch.randint(0, 2, (32, T), generator=g))


class DictTokens(torch.utils.data.Dataset[dict[str, torch.Tensor]]):
    def __init__(self) -> None:
        self.data = token_data()

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x, y = self.data[i]
        return {"input_ids": x, "labels": y}


def fit(tmp_path: Path, model: pl.LightningModule, data: Any, **kw: Any) -> CausalityCheck:
    check = CausalityCheck(on_fail="ignore", **kw)
    trainer = fast_trainer(tmp_path, max_steps=1, callbacks=[check])
    trainer.fit(model, DataLoader(data, batch_size=8))
    return check


@pytest.mark.parametrize("embed", [True, False], ids=["embedding_gradient", "one_hot_perturbation"])
def test_attention_mask_off_by_one_is_caught(tmp_path: Path, embed: bool) -> None:
    check = fit(tmp_path, TinyGPT(diagonal=2, embed=embed), token_data())
    (finding,) = check.findings
    assert finding.status == "fail", finding.summary
    assert "output at t=0 depends on input at t=1" in finding.summary or not embed
    assert ("gradients at the output of embedding `wte`" if embed else "perturbing the input") in finding.summary
    assert finding.values["max_lookahead"] == 1.0  # exactly one step ahead: the off-by-one
    assert finding.values["max_future_dependency"] > 0.01
    ea = read_events(tmp_path / "run")
    assert finding_values(ea, TAG)["future_pairs"] >= 6
    (image,) = ea.Images(f"{TAG}/dependency_matrix")
    assert (image.height, image.width, 3) == FIGURE_SHAPE  # a figure with axes and a colour bar


@pytest.mark.parametrize(
    ("model", "data", "how"),
    [
        (TinyGPT(), token_data(), "gradients at the output of embedding `wte`"),
        (TinyGPT(embed=False), token_data(), "perturbing the input"),
        (GRUTagger(), float_data(), "gradients at the input"),
        (DictGPT(), DictTokens(), "gradients at the output of embedding `wte`"),
    ],
    ids=["causal_transformer", "causal_transformer_one_hot", "gru", "dict_batch"],
)
def test_causal_models_pass(tmp_path: Path, model: pl.LightningModule, data: Any, how: str) -> None:
    check = fit(tmp_path, model, data)
    (finding,) = check.findings
    assert finding.status == "pass", finding.summary
    assert how in finding.summary
    assert finding.values["max_future_dependency"] == 0.0 and finding.values["num_positions"] == 8
    assert 0 < finding.values["cost_steps"] < 3  # 2 of 8 sequences: a fraction of the passes
    assert f"{TAG}/dependency_matrix" in read_events(tmp_path / "run").Tags()["images"]


def test_bidirectional_gru_is_caught(tmp_path: Path) -> None:
    (finding,) = fit(tmp_path, GRUTagger(bidirectional=True), float_data()).findings
    assert finding.status == "fail" and finding.values["max_lookahead"] == T - 1


def test_strict_asks_for_inputs_before_t(tmp_path: Path) -> None:
    (finding,) = fit(tmp_path, TinyGPT(), token_data(), strict=True).findings
    assert finding.status == "fail" and "inputs before t" in finding.summary
    assert finding.values["max_lookahead"] == 0.0  # only the diagonal: output t uses input t


@pytest.mark.parametrize(("causal", "status"), [(True, "pass"), (False, "fail")])
def test_explicit_time_dim_for_channels_first_convolutions(tmp_path: Path, causal: bool, status: str) -> None:
    (finding,) = fit(tmp_path, ConvTagger(causal), float_data(time_last=True), time_dim=2).findings
    assert finding.status == status, finding.summary


@pytest.mark.parametrize(
    ("model", "data", "kw", "reason"),
    [
        (TinyClassifier(), blobs(), {}, "is not a sequence"),
        (ConvTagger(True), float_data(time_last=True), {"time_dim": 5}, "time_dim=5"),
        (TinyGPT(embed=False), token_data(), {"method": "gradient"}, "no gradient"),
    ],
    ids=["not_a_sequence", "time_dim_too_large", "gradient_without_embedding"],
)
def test_cannot_run_skips_naming_the_argument(
    tmp_path: Path, model: pl.LightningModule, data: Any, kw: dict[str, Any], reason: str
) -> None:
    (finding,) = fit(tmp_path, model, data, **kw).findings
    assert finding.status == "skip" and reason in finding.summary
    assert "CausalityCheck(time_dim=...)" in finding.advice or "method" in finding.advice


class RowMixer(pl.LightningModule):
    """Tabular data as (B, 5, 2): five readings of two sensors; each row's output sees every row
    through a pooled summary, as a set model does by design. Not a sequence model."""

    def __init__(self) -> None:
        super().__init__()
        self.row = nn.Linear(2, 8)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.row(x))  # (B, 5, 8)
        pooled = h.mean(dim=1, keepdim=True).expand_as(h)
        return self.head(torch.cat([h, pooled], dim=-1))  # (B, 5, 3)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x).flatten(0, 1), y.flatten())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_non_sequence_float_input_is_a_skip_naming_time_dim(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    rows = TensorDataset(torch.randn(32, 5, 2, generator=g), torch.randint(0, 3, (32, 5), generator=g))
    (finding,) = fit(tmp_path / "inferred", RowMixer(), rows).findings  # used to FAIL as a causal leak
    assert finding.status == "skip", finding.message()
    assert "no recurrent or attention module" in finding.summary and "CausalityCheck(time_dim=...)" in finding.advice
    # Told that dim 1 is time, the check runs and sees the mixing.
    (finding,) = fit(tmp_path / "told", RowMixer(), rows, time_dim=1).findings
    assert finding.status == "fail" and finding.values["max_lookahead"] == 4


def test_on_fail_raise(tmp_path: Path) -> None:
    trainer = fast_trainer(tmp_path, max_steps=1, callbacks=[CausalityCheck(on_fail="raise")])
    with pytest.raises(RecipeCheckError, match="sees the future"):
        trainer.fit(TinyGPT(diagonal=2), DataLoader(token_data(), batch_size=8))


@pytest.mark.parametrize(
    ("kw", "error", "match"),
    [
        ({"num_positions": 0}, ValueError, r"CausalityCheck\(num_positions=0\)"),
        ({"num_samples": 1.5}, TypeError, r"CausalityCheck\(num_samples=1.5\)"),
        ({"time_dim": 0}, ValueError, r"CausalityCheck\(time_dim=0\)"),
        ({"max_dependency": 2.0}, ValueError, r"CausalityCheck\(max_dependency=2.0\)"),
        ({"strict": 1}, TypeError, r"CausalityCheck\(strict=1\)"),
        ({"method": "guess"}, ValueError, r"CausalityCheck\(method='guess'\)"),
    ],
)
def test_bad_arguments_name_the_argument(kw: dict[str, Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        CausalityCheck(**kw)


def seeded_state(tmp_path: Path, callbacks: list[pl.Callback]) -> dict[str, torch.Tensor]:
    pl.seed_everything(3)
    model = TinyGPT(dropout=0.3)
    trainer = fast_trainer(tmp_path, max_steps=3, callbacks=callbacks, logger=False)
    trainer.fit(model, DataLoader(token_data(), batch_size=8, shuffle=True))
    return model.state_dict()


def test_seeded_run_with_both_checks_ends_with_the_same_weights(tmp_path: Path) -> None:
    plain = seeded_state(tmp_path / "plain", [])
    checks = [BatchIndependenceCheck(on_fail="ignore"), CausalityCheck(on_fail="ignore")]
    checked = seeded_state(tmp_path / "checked", list(checks))
    assert [c.findings[0].status for c in checks] == ["pass", "pass"]
    for name, value in plain.items():
        assert torch.equal(value, checked[name]), name


def test_ddp_spawn_two_processes(tmp_path: Path) -> None:
    checks = [BatchIndependenceCheck(on_fail="ignore"), CausalityCheck(on_fail="ignore")]
    trainer = fast_trainer(
        tmp_path, max_steps=1, callbacks=checks, accelerator="cpu", devices=2, strategy="ddp_spawn"
    )
    trainer.fit(TinyGPT(diagonal=2), loader(token_data(), batch_size=8))
    ea = read_events(tmp_path / "run")
    assert finding_values(ea, TAG)["max_lookahead"] == 1.0
    assert len(text_values(ea, f"{TAG}/finding")) == 1  # rank 0 alone writes, once
    assert finding_values(ea, "recipe.batch_independence_check")["max_leak"] == 0.0
