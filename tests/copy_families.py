"""Small healthy models of the families the copy-training checks must pass, on real data that ships
with Python or scikit-learn, with their usual optimizers: a character LSTM language model, a
nanoGPT-style GPT, Hugging Face GPT-2 from a tiny config (when ``transformers`` is installed), an
MSE regression on the diabetes data, and an 11-class per-pixel segmentation net."""

from __future__ import annotations

import inspect
import json.decoder
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

SEQ = 32


def char_data(n: int = 96, seq: int = SEQ) -> tuple[TensorDataset, int]:
    """Windows of the source text of ``json.decoder`` as character ids: ``(x, y = x shifted by one)``."""
    text = inspect.getsource(json.decoder)
    vocab = sorted(set(text))
    ids = torch.tensor([vocab.index(c) for c in text])
    starts = torch.arange(n) * (len(ids) - seq - 1) // n
    x = torch.stack([ids[s : s + seq] for s in starts])
    y = torch.stack([ids[s + 1 : s + seq + 1] for s in starts])
    return TensorDataset(x, y), len(vocab)


class LMBase(pl.LightningModule):
    """Next-token cross-entropy over ``(B, T)`` ids, AdamW."""

    def __init__(self, lr: float = 3e-3) -> None:
        super().__init__()
        self.lr = lr

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.01)


class CharLSTM(LMBase):
    def __init__(self, vocab: int, hidden: int = 64) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, 32)
        self.lstm = nn.LSTM(32, hidden, num_layers=2, batch_first=True, dropout=0.1)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.emb(x))[0])


class Block(nn.Module):
    """A nanoGPT block: pre-LayerNorm causal self-attention and a GELU MLP."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim), nn.Dropout(dropout))
        self.heads, self.dropout = heads, dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.attn(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=drop)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class NanoGPT(LMBase):
    """nanoGPT's shape: token + position embeddings, blocks, a final LayerNorm, a head without bias
    tied to the token embedding, 0.02-std init."""

    def __init__(self, vocab: int, dim: int = 48, layers: int = 2, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__(lr=1e-3)
        self.wte, self.wpe = nn.Embedding(vocab, dim), nn.Embedding(SEQ, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.wte(x) + self.wpe(torch.arange(x.shape[1], device=x.device))
        for block in self.blocks:
            h = block(h)
        return self.lm_head(self.ln_f(h))


class HFGPT2(LMBase):
    """``transformers.GPT2LMHeadModel`` from a tiny config, its own shifted loss on ``labels``."""

    def __init__(self, vocab: int) -> None:
        super().__init__(lr=1e-3)
        import transformers

        config = transformers.GPT2Config(vocab_size=vocab, n_positions=SEQ, n_embd=48, n_layer=2, n_head=4)
        self.model = transformers.GPT2LMHeadModel(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=x).logits  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.model(input_ids=batch["input_ids"], labels=batch["labels"]).loss  # type: ignore[no-any-return]


def gpt2_loader(batch_size: int = 16) -> tuple[DataLoader[Any], int]:
    """Hugging Face batches: ``input_ids`` and ``labels`` equal to them (the model shifts them)."""
    data, vocab = char_data()
    rows = [{"input_ids": x, "labels": x.clone()} for x, _ in data]
    return DataLoader(rows, batch_size=batch_size), vocab  # type: ignore[arg-type]


class Regressor(pl.LightningModule):
    """An MLP on the diabetes data (10 standardised features, standardised target), MSE, Adam."""

    def __init__(self, lr: float = 1e-3) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def diabetes() -> TensorDataset:
    from sklearn.datasets import load_diabetes

    x, y = load_diabetes(return_X_y=True)
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    xt = (xt - xt.mean(0)) / xt.std(0)
    return TensorDataset(xt, (yt - yt.mean()) / yt.std())


class Segmenter(pl.LightningModule):
    """A small conv encoder-decoder with BatchNorm, 11 classes per pixel, Adam."""

    def __init__(self, classes: int = 11) -> None:
        super().__init__()

        def conv(i: int, o: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())

        self.down = nn.Sequential(conv(1, 16), nn.MaxPool2d(2), conv(16, 32))
        self.up = nn.Sequential(nn.Upsample(scale_factor=2), conv(32, 16), nn.Conv2d(16, classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))  # type: ignore[no-any-return]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def digit_segments(n: int = 64) -> TensorDataset:
    """8x8 digits upscaled to 16x16; each pixel labelled with its digit's class + 1 where the ink
    is, 0 (background) elsewhere: 11 classes per pixel."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, scale_factor=2, mode="nearest")
    label = torch.tensor(d.target[:n]).view(-1, 1, 1) + 1
    y = torch.where(x[:, 0] > 0.3, label, torch.zeros_like(label))
    return TensorDataset(x, y.long())
