"""Models that do not fit ``forward(x) -> logits`` and Hugging Face conventions, across the checks.

Dict batches with ``input_ids``/``attention_mask``/``labels`` (``-100`` on the padding), causal-LM
labels equal to the input ids (the shift done inside the model), ``ModelOutput.logits``, flattened
``(B*T, V)`` logits, a final layer without bias, multi-input forwards and a decoder fed the target.
The models come from the zoo (``tests/zoo``); every check runs in a real Trainer.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from recipe_callbacks import (
    BatchIndependenceCheck,
    CausalityCheck,
    FullEvalSet,
    InitLossCheck,
    InputVisualizer,
    PredictionDynamicsLogger,
    RecipeWarning,
)
from tests.support import fast_trainer, read_events, scalar_values
from tests.zoo import data, families

transformers = pytest.importorskip("transformers")


def fit(root: Path, model: pl.LightningModule, train: Any, val: Any, callbacks: list[Any], **kw: Any) -> pl.Trainer:
    trainer = fast_trainer(root, callbacks=callbacks, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RecipeWarning)
        trainer.fit(model, train, val)
    return trainer


def only(cb: Any) -> Any:
    assert len(cb.findings) == 1, [(f.status, f.summary) for f in cb.findings]
    return cb.findings[0]


# ----------------------------------------------------------------------------- Hugging Face
def _whole(ds: data.DictText) -> dict[str, torch.Tensor]:
    return {"input_ids": ds.input_ids, "attention_mask": ds.attention_mask, "labels": ds.labels}


def test_full_eval_set_equals_the_models_own_next_token_loss(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = families.HFCausalLM()
    val = data.DictText(40, seed=1)  # right-padded, labels == input_ids with -100 on the padding
    assert bool((val.labels == -100).any())
    cb = FullEvalSet()
    trainer = fast_trainer(tmp_path, callbacks=[cb])
    trainer.validate(model, DataLoader(val, batch_size=8), verbose=False)
    model.eval()
    with torch.no_grad():  # the model's own loss over the whole set in one batch: its mean over next tokens
        whole = _whole(val)
        own = float(model(**whole).loss)
    finding = only(cb)
    assert finding.status == "pass", finding.summary
    assert finding.values["loss"] == pytest.approx(own, rel=1e-5, abs=1e-6)
    scored = int((whole["labels"][:, 1:] != -100).sum())
    assert finding.values["num_positions"] == scored and finding.values["num_samples"] == len(val)
    ea = read_events(tmp_path / "run")
    assert scalar_values(ea, "recipe.full_eval_set/loss")[-1] == pytest.approx(own, rel=1e-5)


def test_position_by_position_scoring_would_differ(tmp_path: Path) -> None:
    """The oracle above is not trivially met: unshifted scoring gives another figure."""
    torch.manual_seed(0)
    model = families.HFCausalLM().eval()
    val = data.DictText(40, seed=1)
    with torch.no_grad():
        batch = _whole(val)
        out = model(**batch)
        unshifted = F.cross_entropy(out.logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
    assert abs(float(unshifted) - float(out.loss)) > 0.01


def test_prediction_dynamics_with_ignore_index_records_instead_of_crashing(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cb = PredictionDynamicsLogger(every_n_steps=2, num_samples=4)
    trainer = fit(tmp_path, families.HFCausalLM(), DataLoader(data.DictText(64), batch_size=8),
                  DataLoader(data.DictText(16, seed=1), batch_size=8), [cb], max_steps=8)
    assert trainer.global_step == 8
    assert len(cb.steps) >= 4
    assert not [f for f in cb.findings if f.status == "skip"], [f.summary for f in cb.findings]
    losses = scalar_values(read_events(tmp_path / "run"), "recipe.prediction_dynamics_logger/fixed_batch_loss")
    assert losses and all(math.isfinite(v) for v in losses)


def test_init_loss_on_gpt2_judges_log_v_since_its_lm_head_has_no_bias(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cb = InitLossCheck()
    fit(tmp_path, families.HFCausalLM(), DataLoader(data.DictText(64), batch_size=16), None, [cb], max_steps=1)
    finding = only(cb)
    assert finding.status == "pass", finding.summary
    assert "no bias" in finding.summary and "fix_bias" not in finding.advice
    assert finding.values["expected"] == pytest.approx(math.log(data.vocab_size()))


def test_init_loss_on_a_bias_carrying_lstm_lm_judges_log_v_per_position(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cb = InitLossCheck()
    fit(tmp_path, families.LSTMLM(), DataLoader(data.shifted_pairs(64), batch_size=16), None, [cb], max_steps=1)
    finding = only(cb)
    assert finding.status == "pass", finding.summary
    assert "per-position labels" in finding.summary.lower()


def test_init_loss_still_fails_a_gpt2_initialised_far_too_large(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cb = InitLossCheck()
    fit(tmp_path, families.HFCausalLM(initializer_range=1.0), DataLoader(data.DictText(64), batch_size=16), None,
        [cb], max_steps=1)
    assert only(cb).status == "fail"


# ----------------------------------------------------------------------------- priors from enough data
def _sorted_zero_vs_rest() -> TensorDataset:
    train, _ = data.zero_vs_rest(1200, 10)
    x, y = train.tensors
    order = torch.argsort(y, stable=True)  # class-sorted: every negative first
    return TensorDataset(x[order], y[order])


def test_init_loss_counts_the_prior_over_many_batches_not_the_first(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cb = InitLossCheck()
    train = _sorted_zero_vs_rest()
    fit(tmp_path, families.TabularBinary(64), DataLoader(train, batch_size=32), None, [cb], max_steps=1)
    finding = only(cb)
    # the default bias on a 1:9 task: flagged against the counted prior, not "expected -0, ratio inf"
    assert finding.status == "warn", finding.summary
    assert "counted over" in finding.summary
    assert 0.0 < finding.values["expected"] < math.log(2) and math.isfinite(finding.values["ratio"])


def test_init_loss_warns_a_default_bias_when_the_first_batch_is_rich_in_positives(tmp_path: Path) -> None:
    torch.manual_seed(0)
    x, y = _sorted_zero_vs_rest().tensors
    pos, neg = torch.nonzero(y == 1).flatten(), torch.nonzero(y == 0).flatten()
    order = torch.cat([pos[:16], neg[:16], pos[16:], neg[16:]])  # the first batch: half positives
    cb = InitLossCheck()
    fit(tmp_path, families.TabularBinary(64), DataLoader(TensorDataset(x[order], y[order]), batch_size=32), None,
        [cb], max_steps=1)
    finding = only(cb)
    assert finding.status == "warn" and "default bias" in finding.summary, finding.summary
    assert finding.values["prob_gap"] > 0.25


def test_input_visualizer_lets_an_all_negative_batch_of_a_1_9_task_pass(tmp_path: Path) -> None:
    cb = InputVisualizer()
    fit(tmp_path, families.TabularBinary(64, positive_rate=0.1), DataLoader(_sorted_zero_vs_rest(), batch_size=32),
        None, [cb], max_steps=1)
    assert all("targets of the batch" not in f.summary for f in cb.findings), [f.summary for f in cb.findings]


def test_input_visualizer_still_warns_when_the_whole_set_is_one_label(tmp_path: Path) -> None:
    x, _ = _sorted_zero_vs_rest().tensors
    cb = InputVisualizer()
    fit(tmp_path, families.TabularBinary(64), DataLoader(TensorDataset(x, torch.zeros(len(x))), batch_size=32),
        None, [cb], max_steps=1)
    assert any(f.status == "warn" and "targets of the batch" in f.summary for f in cb.findings)


# ----------------------------------------------------------------------------- models that do not fit forward(x)
class TwoInputMixer(pl.LightningModule):
    """``forward(x, aux)``: with ``mix`` the second input leaks across samples (its batch mean)."""

    def __init__(self, mix: bool) -> None:
        super().__init__()
        self.a, self.b, self.mix = nn.Linear(4, 3), nn.Linear(2, 3), mix

    def forward(self, x: torch.Tensor, aux: torch.Tensor) -> torch.Tensor:
        side = aux - aux.mean(0, keepdim=True) if self.mix else aux
        return self.a(x) + self.b(side)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, aux, y = batch
        return F.cross_entropy(self(x, aux), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.mark.parametrize("mix", [False, True])
def test_batch_independence_differentiates_every_input(tmp_path: Path, mix: bool) -> None:
    torch.manual_seed(0)
    ds = TensorDataset(torch.randn(16, 4), torch.randn(16, 2), torch.randint(0, 3, (16,)))
    cb = BatchIndependenceCheck()
    fit(tmp_path, TwoInputMixer(mix), DataLoader(ds, batch_size=8), None, [cb], max_steps=1)
    finding = only(cb)
    assert finding.status == ("fail" if mix else "pass"), finding.summary


class Seq2Seq(pl.LightningModule):
    """``forward(src, tgt)`` as Lightning's demo transformer has it, here with a causal mask over both
    streams (position t reads ``src[:t+1]`` and ``tgt[:t+1]``), flattened ``(B*T, V)`` log-probabilities.

    ``shift=True`` is teacher forcing done right (the decoder sees ``<bos> + target[:-1]``); without
    it the decoder input is the target itself, and position t is told the answer.
    """

    def __init__(self, vocab: int = 12, width: int = 16, shift: bool = True) -> None:
        super().__init__()
        self.vocab, self.shift = vocab, shift
        self.embed = nn.Embedding(vocab, width)
        self.layer = nn.TransformerEncoderLayer(width, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(width, vocab)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(tgt.shape[1])
        h = self.layer(self.embed(src) + self.embed(tgt), src_mask=mask, is_causal=True)
        return F.log_softmax(self.head(h), dim=-1).view(-1, self.vocab)  # (B*T, V)

    def decoder_input(self, target: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(target[:, :1]), target[:, :-1]], dim=1) if self.shift else target

    def step(self, batch: Any) -> torch.Tensor:
        src, target = batch
        return self(src, self.decoder_input(target))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return F.nll_loss(self.step(batch), batch[1].reshape(-1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


@pytest.mark.parametrize("shift", [True, False])
def test_causality_sees_a_decoder_fed_the_target(tmp_path: Path, shift: bool) -> None:
    torch.manual_seed(0)
    src = torch.randint(1, 12, (8, 6))
    ds = TensorDataset(src, src.flip(1))  # reverse the sequence
    cb = CausalityCheck(forward_fn="step")
    fit(tmp_path, Seq2Seq(shift=shift), DataLoader(ds, batch_size=4), None, [cb], max_steps=1)
    finding = only(cb)
    assert finding.status == ("pass" if shift else "fail"), finding.summary
    if not shift:
        assert "fed the answer" in finding.summary


def test_a_forward_the_checks_cannot_call_is_a_skip_naming_forward_fn(tmp_path: Path) -> None:
    class Odd(TwoInputMixer):
        def forward(self, x: torch.Tensor, aux: torch.Tensor, *, scale: float) -> torch.Tensor:  # type: ignore[override]
            return super().forward(x, aux) * scale

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, aux, y = batch
            return F.cross_entropy(self(x, aux, scale=1.0), y)

    ds = TensorDataset(torch.randn(16, 4), torch.randn(16, 2), torch.randint(0, 3, (16,)))
    checks = [BatchIndependenceCheck(), CausalityCheck(time_dim=1)]
    fit(tmp_path, Odd(False), DataLoader(ds, batch_size=8), None, checks, max_steps=1)
    for cb in checks:
        finding = only(cb)
        assert finding.status == "skip" and "forward_fn=" in finding.advice, (finding.summary, finding.advice)
