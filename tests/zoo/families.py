"""The zoo's model families, each wrapped in a LightningModule the way that family's users write it.

Every family is built from a config with random init (no download) and trains on real data
(:mod:`tests.zoo.data`). ``build(family, bug)`` returns a :class:`Case`; ``bug=None`` is the
healthy model, else one of the family's planted bugs (:data:`PLANTED`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset

from tests.zoo import data


@dataclass
class Case:
    module: pl.LightningModule
    train: Dataset[Any]
    val: Dataset[Any]
    max_epochs: int = 3
    batch_size: int = 16
    shuffle: bool = True
    trainer_kwargs: dict[str, Any] = field(default_factory=dict)

    def loaders(self) -> tuple[DataLoader[Any], DataLoader[Any]]:
        return (
            DataLoader(self.train, batch_size=self.batch_size, shuffle=self.shuffle),
            DataLoader(self.val, batch_size=self.batch_size),
        )


class _Base(pl.LightningModule):
    """Adam at 3e-4 (the recipe's default) unless a family says otherwise."""

    lr = 3e-4

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


# ----------------------------------------------------------------------------- Hugging Face text
class HFCausalLM(_Base):
    """GPT-2 from a tiny ``GPT2Config``: dict batches, ``labels == input_ids`` (-100 on padding), the
    shift inside the model, ``ModelOutput`` with ``.loss`` and ``.logits``."""

    lr = 1e-3

    def __init__(self, initializer_range: float = 0.02) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(
            vocab_size=data.vocab_size(), n_positions=32, n_embd=32, n_layer=2, n_head=2,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=initializer_range,
        )
        self.model = GPT2LMHeadModel(config)

    def forward(self, **inputs: torch.Tensor) -> Any:
        return self.model(**inputs)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        outputs = self(**batch)
        self.log("train_loss", outputs.loss)
        return outputs.loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self(**batch).loss)


class HFSequenceClassifier(_Base):
    """BERT for sequence classification from a tiny ``BertConfig``: which module a snippet is from."""

    lr = 1e-3

    def __init__(self) -> None:
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            vocab_size=data.vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, max_position_embeddings=32, num_labels=2, pad_token_id=data.PAD,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )
        self.model = BertForSequenceClassification(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> Any:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self(**batch).loss
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        out = self(**batch)
        self.log("val_loss", out.loss)


# ----------------------------------------------------------------------------- nanoGPT
class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, block: int, leak: bool) -> None:
        super().__init__()
        self.heads = heads
        self.c_attn = nn.Linear(width, 3 * width, bias=False)
        self.c_proj = nn.Linear(width, width, bias=False)
        # the planted bug: the mask is off by one and position t also sees t + 1
        mask = torch.tril(torch.ones(block, block), diagonal=1 if leak else 0)
        self.register_buffer("bias", mask.view(1, 1, block, block), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))  # (B, nh, T, hs)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :t, :t] == 0, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(b, t, c)
        return self.c_proj(y)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, block: int, leak: bool) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads, block, leak)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """nanoGPT's model, small: tied ``lm_head`` without bias, logits of the last position only when
    no targets are given (generation), ``(logits, loss)`` returned."""

    def __init__(self, vocab: int, block: int = 32, width: int = 32, layers: int = 2, heads: int = 2,
                 leak: bool = False) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(block, width)
        self.h = nn.ModuleList([Block(width, heads, block, leak) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t, device=idx.device))  # (B, T, C)
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        if targets is not None:
            logits = self.lm_head(x)  # (B, T, V)
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        else:
            logits = self.lm_head(x[:, [-1], :])  # (B, 1, V): inference-time optimisation
            loss = None
        return logits, loss


class NanoGPT(_Base):
    lr = 1e-3

    def __init__(self, leak: bool = False) -> None:
        super().__init__()
        self.model = GPT(data.vocab_size(), leak=leak)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]:
        return self.model(idx, targets)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        _, loss = self(x, y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        _, loss = self(x, y)
        self.log("val_loss", loss)


# ----------------------------------------------------------------------------- LSTM language model
class LSTMLM(_Base):
    """PyTorch's word_language_model, small: ``forward`` returns flattened ``(B*T, V)`` logits."""

    lr = 3e-3

    def __init__(self, logit_scale: float = 1.0) -> None:
        super().__init__()
        v = data.vocab_size()
        self.encoder = nn.Embedding(v, 32)
        self.rnn = nn.LSTM(32, 64, num_layers=1, batch_first=True)
        self.decoder = nn.Linear(64, v)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        with torch.no_grad():
            self.decoder.weight.mul_(logit_scale)  # the planted bug: a final layer initialised 200x too large

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.encoder(x))
        return self.decoder(out).view(-1, self.decoder.out_features)  # (B*T, V)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y.reshape(-1))
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y.reshape(-1)))


# ----------------------------------------------------------------------------- Hugging Face vision
class HFResNet(_Base):
    """ResNet-18-like (BatchNorm, residual stages) from a tiny ``ResNetConfig``: ``pixel_values`` dicts."""

    lr = 1e-3

    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__()
        from transformers import ResNetConfig, ResNetForImageClassification

        config = ResNetConfig(num_channels=1, embedding_size=16, hidden_sizes=[16, 32], depths=[2, 2],
                              layer_type="basic", num_labels=10, downsample_in_first_stage=False)
        self.model = ResNetForImageClassification(config)
        self.lr = lr

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        outputs = self.model(pixel_values=batch["pixel_values"], labels=batch["labels"])
        self.log("train_loss", outputs.loss)
        return outputs.loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self(batch["pixel_values"]), batch["labels"]))


class HFViT(_Base):
    """A small ViT from a ``ViTConfig``; ``forward`` returns the ``ModelOutput`` itself."""

    def __init__(self, ignore_input: bool = False) -> None:
        super().__init__()
        from transformers import ViTConfig, ViTForImageClassification

        config = ViTConfig(image_size=16, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64, num_labels=10,
                           hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        self.model = ViTForImageClassification(config)
        self.ignore_input = ignore_input
        self.lr = 1e-3

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        if self.ignore_input:  # the planted bug: the image never reaches the model
            pixel_values = torch.zeros_like(pixel_values)
        return self.model(pixel_values=pixel_values, labels=labels)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self(**batch).loss
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", self(**batch).loss)


# ----------------------------------------------------------------------------- UNet
def _conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())


class TinyUNet(_Base):
    """A two-level UNet with skip connection and per-pixel labels ``(N, H, W)``."""

    lr = 3e-3

    def __init__(self, classes: int = 3, mix: bool = False) -> None:
        super().__init__()
        self.down1, self.down2 = _conv(1, 8), _conv(8, 16)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.out1 = _conv(16, 8)
        self.head = nn.Conv2d(8, classes, 1)
        self.mix = mix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.down1(x)  # (N, 8, H, W)
        b = self.down2(F.max_pool2d(a, 2))  # (N, 16, H/2, W/2)
        if self.mix:  # the planted bug: a transpose-then-reshape that mixes samples
            b = b.transpose(0, 1).reshape(b.shape)
        u = self.up(b)
        return self.head(self.out1(torch.cat([u, a], dim=1)))  # (N, C, H, W)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, mask = batch
        loss = F.cross_entropy(self(x), mask)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, mask = batch
        self.log("val_loss", F.cross_entropy(self(x), mask))


# ----------------------------------------------------------------------------- tabular and digits
class TabularBinary(_Base):
    """An MLP with one logit, BCE with logits on float 0/1 targets; the bias set to the log-odds of
    the positive rate (recipe: init well) unless ``default_bias``."""

    lr = 1e-3

    def __init__(self, features: int, positive_rate: float | None = None) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, 1))
        if positive_rate is not None:
            with torch.no_grad():
                self.net[-1].bias.fill_(math.log(positive_rate / (1 - positive_rate)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (N, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.binary_cross_entropy_with_logits(self(x).squeeze(-1), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.binary_cross_entropy_with_logits(self(x).squeeze(-1), y))


class TabularRegression(_Base):
    lr = 1e-3

    def __init__(self, features: int = 10) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (N, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.mse_loss(self(x), y))


class DigitsCNN(_Base):
    lr = 1e-3

    def __init__(self, logit_scale: float = 1.0, mix: bool = False) -> None:
        super().__init__()
        self.logit_scale = logit_scale  # the planted bug: logits * 20
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(32 * 2 * 2, 10)
        self.mix = mix

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # (N, 32, 2, 2)
        # the planted bug (mix): a view with the batch in the wrong place
        h = h.permute(1, 0, 2, 3).reshape(h.shape[0], -1) if self.mix else h.flatten(1)
        return self.classifier(h) * self.logit_scale

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))


# ----------------------------------------------------------------------------- the registry
def _gpt2(bug: str | None) -> Case:
    module = HFCausalLM(initializer_range=1.0 if bug == "init_range_1" else 0.02)
    return Case(module, data.DictText(128, seed=0), data.DictText(32, seed=1))


def _bert(bug: str | None) -> Case:
    return Case(HFSequenceClassifier(), data.DictText(256, seed=0, causal=False),
                data.DictText(32, seed=1, causal=False))


def _nanogpt(bug: str | None) -> Case:
    return Case(NanoGPT(leak=bug == "leaky_mask"), data.shifted_pairs(128, seed=0), data.shifted_pairs(32, seed=1))


def _lstm(bug: str | None) -> Case:
    module = LSTMLM(logit_scale=200.0 if bug == "large_final_layer" else 1.0)
    return Case(module, data.shifted_pairs(128, seed=0), data.shifted_pairs(32, seed=1))


def _resnet(bug: str | None) -> Case:
    train, val = data.digits(256, 64, size=16)
    module = HFResNet(lr=0.0 if bug == "lr_0" else 1e-3)
    return Case(module, data.PixelDicts(train), data.PixelDicts(val), max_epochs=2)


def _vit(bug: str | None) -> Case:
    train, val = data.digits(256, 64, size=16)
    return Case(HFViT(ignore_input=bug == "ignores_input"), data.PixelDicts(train), data.PixelDicts(val))


def _unet(bug: str | None) -> Case:
    train, val = data.digit_masks(128, 32)
    return Case(TinyUNet(mix=bug == "mixes_samples"), train, val, max_epochs=2)


def _tabular_binary(bug: str | None) -> Case:
    train, val = data.breast_cancer()
    return Case(TabularBinary(30), train, val, batch_size=32)


def _imbalanced_binary(bug: str | None) -> Case:
    train, val = data.zero_vs_rest(1200, 400)
    rate = float(train.tensors[1].mean())
    return Case(TabularBinary(64, positive_rate=None if bug == "default_bias" else rate), train, val, batch_size=32,
                max_epochs=2)


def _tabular_regression(bug: str | None) -> Case:
    train, val = data.diabetes(standardise_target=bug != "raw_targets")
    return Case(TabularRegression(10), train, val, batch_size=32)


def _digits_cnn(bug: str | None) -> Case:
    train, val = data.digits(1200, 400)
    module = DigitsCNN(logit_scale=20.0 if bug == "logits_x20" else 1.0, mix=bug == "mixes_samples")
    return Case(module, train, val, batch_size=32, max_epochs=2)


FAMILIES: dict[str, Callable[[str | None], Case]] = {
    "hf_gpt2": _gpt2,
    "hf_bert": _bert,
    "nanogpt": _nanogpt,
    "lstm_lm": _lstm,
    "hf_resnet": _resnet,
    "hf_vit": _vit,
    "unet": _unet,
    "tabular_binary": _tabular_binary,
    "imbalanced_binary": _imbalanced_binary,
    "tabular_regression": _tabular_regression,
    "digits_cnn": _digits_cnn,
}

# (family, bug) -> (the check that must catch it, the statuses that count as caught)
PLANTED: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    ("hf_gpt2", "init_range_1"): ("InitLossCheck", ("fail",)),
    ("nanogpt", "leaky_mask"): ("CausalityCheck", ("fail",)),
    ("lstm_lm", "large_final_layer"): ("InitLossCheck", ("fail",)),
    ("hf_resnet", "lr_0"): ("LossDecreaseCheck", ("fail",)),
    ("hf_vit", "ignores_input"): ("InputIndependentBaseline", ("fail", "warn")),
    ("unet", "mixes_samples"): ("BatchIndependenceCheck", ("fail",)),
    ("imbalanced_binary", "default_bias"): ("InitLossCheck", ("warn",)),
    ("tabular_regression", "raw_targets"): ("InitLossCheck", ("warn", "fail")),
    ("digits_cnn", "logits_x20"): ("InitLossCheck", ("fail",)),
    ("digits_cnn", "mixes_samples"): ("BatchIndependenceCheck", ("fail",)),
}


def build(family: str, bug: str | None = None) -> Case:
    if family not in FAMILIES:
        raise ValueError(f"unknown zoo family {family!r}; the families are {sorted(FAMILIES)}")
    if bug is not None and (family, bug) not in PLANTED:
        raise ValueError(f"family {family!r} has no planted bug {bug!r}")
    return FAMILIES[family](bug)


# Alarms on healthy models that belong to work outside the zoo's own fixes, by (family, check):
# the fast test tolerates them (and says so), the table shows them. Remove an entry once it is fixed.
KNOWN_ALARMS: dict[tuple[str, str], str] = {
}
