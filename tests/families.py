"""Healthy models of the common families, on real data, for the checks that must not cry wolf:
an LSTM language model and a small GPT (tied embeddings, more positions than the sequences use,
dropout, AdamW with weight decay) on the source of ``textwrap``, a BatchNorm CNN on the digits,
tabular regression on scikit-learn's diabetes data, and a GAN-style model with two optimizers under
manual optimization."""

from __future__ import annotations

import inspect
import textwrap
from typing import Any

import lightning.pytorch as pl
import torch
from sklearn.datasets import load_diabetes
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from examples.char_lm import CharWindows
from examples.digits import digits_datasets


def text_windows(block: int = 16) -> CharWindows:
    return CharWindows(inspect.getsource(textwrap), block=block)


class LSTMLanguageModel(pl.LightningModule):
    """Character LSTM: embedding, 2-layer LSTM with dropout between layers, linear head; (B, T, V) logits."""

    def __init__(self, vocab_size: int, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.lstm = nn.LSTM(width, width, num_layers=2, batch_first=True, dropout=0.2)
        self.head = nn.Linear(width, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.embed(ids))  # (B, T, W)
        return self.head(h)  # (B, T, V)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


class Block(nn.Module):
    def __init__(self, width: int, heads: int, block: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, dropout=0.1, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width), nn.Dropout(0.1))
        self.register_buffer("mask", torch.triu(torch.ones(block, block, dtype=torch.bool), diagonal=1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        t = h.shape[1]
        a = self.ln1(h)
        h = h + self.attn(a, a, a, attn_mask=self.mask[:t, :t], need_weights=False)[0]
        return h + self.mlp(self.ln2(h))


class TinyGPT(pl.LightningModule):
    """A small GPT: token + learned position embeddings (64 positions, sequences of 16), two
    pre-norm blocks, the head tied to the token embedding, AdamW with weight decay."""

    def __init__(self, vocab_size: int, width: int = 32, block: int = 64) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab_size, width)
        self.pos = nn.Embedding(block, width)
        self.drop = nn.Dropout(0.1)
        self.blocks = nn.Sequential(Block(width, 4, block), Block(width, 4, block))
        self.ln_f = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)
        self.head.weight = self.tok.weight  # tied

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        t = ids.shape[1]
        h = self.drop(self.tok(ids) + self.pos(torch.arange(t, device=ids.device)))
        return self.head(self.ln_f(self.blocks(h)))  # (B, T, V)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=3e-3, weight_decay=0.1)


class BatchNormCNN(pl.LightningModule):
    """Conv-BN-ReLU twice, dropout, linear head, on (N, 1, 8, 8) digits."""

    def __init__(self, momentum: float | None = 0.1, dropout: float = 0.2) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16, momentum=momentum), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16, momentum=momentum), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(16 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x).flatten(1)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


class TabularRegressor(pl.LightningModule):
    """An MLP with BatchNorm1d on the 10 diabetes features; a (B, 1) output squeezed against (B,) targets."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(10, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, 1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(self(x).squeeze(-1), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2, weight_decay=1e-4)


class TwoOptimizerGAN(pl.LightningModule):
    """Manual optimization with two optimizers as Lightning's GAN example writes it: each optimizer's
    gradients zeroed just before its own backward (the generator's backward also reaches the
    discriminator, whose gradients are zeroed before its own)."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 10))
        self.discriminator = nn.Sequential(nn.Linear(10, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real, _ = batch
        opt_g, opt_d = self.optimizers()  # type: ignore[misc]
        z = torch.randn(real.shape[0], 4)
        fake = self(z)
        ones, zeros = torch.ones(real.shape[0], 1), torch.zeros(real.shape[0], 1)
        g_loss = F.binary_cross_entropy_with_logits(self.discriminator(fake), ones)
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        d_loss = F.binary_cross_entropy_with_logits(self.discriminator(real), ones) + \
            F.binary_cross_entropy_with_logits(self.discriminator(fake.detach()), zeros)
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()

    def configure_optimizers(self) -> Any:
        return (torch.optim.Adam(self.generator.parameters(), lr=1e-3),
                torch.optim.Adam(self.discriminator.parameters(), lr=1e-3))


def diabetes() -> TensorDataset:
    data = load_diabetes()
    x = torch.tensor(data.data, dtype=torch.float32)
    y = torch.tensor(data.target, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    return TensorDataset(x, (y - y.mean()) / y.std())


def healthy_runs() -> dict[str, tuple[pl.LightningModule, DataLoader[Any]]]:
    """One (model, train loader) per family, built under a fixed seed."""
    pl.seed_everything(0, verbose=False)
    text = text_windows()
    digits = digits_datasets()[0]
    return {
        "lstm_lm": (LSTMLanguageModel(len(text.vocab)), DataLoader(text, batch_size=16, shuffle=True)),
        "gpt": (TinyGPT(len(text.vocab)), DataLoader(text, batch_size=16, shuffle=True)),
        "batchnorm_cnn": (BatchNormCNN(), DataLoader(digits, batch_size=32, shuffle=True)),
        "tabular_regression": (TabularRegressor(), DataLoader(diabetes(), batch_size=32, shuffle=True)),
    }
