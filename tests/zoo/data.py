"""Real data that ships with Python and scikit-learn, no download: the zoo's data sets.

Text is the source of two standard-library modules (``json.decoder`` and ``textwrap``), read with
``inspect.getsource``; images are scikit-learn's 8x8 handwritten digits; tables are
``load_breast_cancer`` (binary) and ``load_diabetes`` (regression). Every split is seeded.
"""

from __future__ import annotations

import inspect
import json.decoder
import textwrap
from functools import lru_cache

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

PAD = 0  # token id of padding in the Hugging Face style batches (its label is -100)
IGNORE_INDEX = -100


@lru_cache(maxsize=1)
def corpus() -> tuple[str, str]:
    """The source of ``json.decoder`` and of ``textwrap``."""
    return inspect.getsource(json.decoder), inspect.getsource(textwrap)


@lru_cache(maxsize=1)
def vocabulary() -> dict[str, int]:
    """Characters of both sources; id 0 is padding."""
    chars = sorted(set("".join(corpus())))
    return {c: i + 1 for i, c in enumerate(chars)}


def encode(text: str) -> torch.Tensor:
    vocab = vocabulary()
    return torch.tensor([vocab[c] for c in text], dtype=torch.long)


def vocab_size() -> int:
    return len(vocabulary()) + 1


def _windows(ids: torch.Tensor, block: int, count: int, seed: int) -> torch.Tensor:
    """``count`` windows of ``block + 1`` tokens at seeded random offsets: ``(count, block + 1)``.

    Seed 0 (training) draws from the first 80% of the text, any other seed (validation) from the
    rest, so that no validation window is a copy of a training window.
    """
    g = torch.Generator().manual_seed(seed)
    cut = int(len(ids) * 0.8)
    part = ids[:cut] if seed == 0 else ids[cut:]
    # source code repeats itself: a validation window may not be any training window
    seen = {tuple(ids[s : s + block + 1].tolist()) for s in range(cut - block)} if seed != 0 else set()
    windows: list[torch.Tensor] = []
    while len(windows) < count:
        s = int(torch.randint(0, len(part) - block - 1, (1,), generator=g))
        window = part[s : s + block + 1]
        if tuple(window.tolist()) not in seen:
            windows.append(window)
    return torch.stack(windows)


def shifted_pairs(count: int, block: int = 32, seed: int = 0) -> TensorDataset:
    """``(x, y)`` with ``y`` the next character of each ``x`` (the shift done by the data): nanoGPT, LSTM."""
    w = _windows(encode(corpus()[0]), block, count, seed)
    return TensorDataset(w[:, :-1].contiguous(), w[:, 1:].contiguous())


class DictText(Dataset[dict[str, torch.Tensor]]):
    """Hugging Face style samples: ``input_ids``, ``attention_mask`` and ``labels``, right-padded.

    ``causal=True``: ``labels == input_ids`` with ``-100`` on the padding (the model shifts);
    ``causal=False``: a sequence label, which of the two modules the snippet comes from.
    """

    def __init__(self, count: int, block: int = 32, seed: int = 0, causal: bool = True) -> None:
        g = torch.Generator().manual_seed(seed + 1)
        sources = [encode(s) for s in corpus()]
        if causal:
            windows = _windows(sources[0], block - 1, count, seed)
            which = torch.zeros(count, dtype=torch.long)
        else:
            which = torch.arange(count) % 2
            parts = [_windows(sources[k], block - 1, count, seed) for k in range(2)]
            windows = torch.stack([parts[int(k)][i] for i, k in enumerate(which)])
        lengths = torch.randint(block // 2, block + 1, (count,), generator=g)
        self.input_ids = torch.full((count, block), PAD, dtype=torch.long)
        self.attention_mask = torch.zeros(count, block, dtype=torch.long)
        for i, n in enumerate(lengths.tolist()):
            self.input_ids[i, :n] = windows[i, :n]
            self.attention_mask[i, :n] = 1
        if causal:
            self.labels = self.input_ids.masked_fill(self.attention_mask == 0, IGNORE_INDEX)
        else:
            self.labels = which

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "attention_mask": self.attention_mask[i], "labels": self.labels[i]}


@lru_cache(maxsize=1)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    return x, torch.tensor(d.target, dtype=torch.long)


def digits(n_train: int, n_val: int, size: int = 8) -> tuple[TensorDataset, TensorDataset]:
    """Normalised digits ``(N, 1, size, size)`` and their classes; the first ``n_train`` for training."""
    x, y = _digits()
    if size != 8:
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = (x - 0.3) / 0.4
    a, b = n_train, n_train + n_val
    return TensorDataset(x[:a], y[:a]), TensorDataset(x[a:b], y[a:b])


class PixelDicts(Dataset[dict[str, torch.Tensor]]):
    """Hugging Face vision style samples: ``{"pixel_values", "labels"}``."""

    def __init__(self, base: TensorDataset) -> None:
        self.x, self.y = base.tensors

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def digit_masks(n_train: int, n_val: int, size: int = 16) -> tuple[TensorDataset, TensorDataset]:
    """Per-pixel labels ``(N, H, W)``: 0 background, 1 stroke of an even digit, 2 of an odd one."""
    x, y = _digits()
    x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    stroke = x[:, 0] > 0.3
    masks = torch.where(stroke, 1 + (y % 2).view(-1, 1, 1), torch.zeros_like(stroke, dtype=torch.long))
    x = (x - 0.3) / 0.4
    a, b = n_train, n_train + n_val
    return TensorDataset(x[:a], masks[:a]), TensorDataset(x[a:b], masks[a:b])


def zero_vs_rest(n_train: int, n_val: int) -> tuple[TensorDataset, TensorDataset]:
    """Digit 0 against the rest (about 1:9), flattened 64 features, float 0/1 targets."""
    x, y = _digits()
    x = ((x - 0.3) / 0.4).flatten(1)
    t = (y == 0).float()
    a, b = n_train, n_train + n_val
    return TensorDataset(x[:a], t[:a]), TensorDataset(x[a:b], t[a:b])


def _standardised(x: torch.Tensor, n_train: int) -> torch.Tensor:
    mean, std = x[:n_train].mean(0), x[:n_train].std(0).clamp_min(1e-8)
    return (x - mean) / std


def breast_cancer(n_train: int = 400) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's breast cancer table, standardised, float 0/1 targets (N,)."""
    from sklearn.datasets import load_breast_cancer

    d = load_breast_cancer()
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(d.target), generator=g)
    x = torch.tensor(d.data, dtype=torch.float32)[order]
    y = torch.tensor(d.target, dtype=torch.float32)[order]
    x = _standardised(x, n_train)
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])


def diabetes(n_train: int = 340, standardise_target: bool = True) -> tuple[TensorDataset, TensorDataset]:
    """scikit-learn's diabetes table, standardised features, targets ``(N, 1)`` (standardised unless told)."""
    from sklearn.datasets import load_diabetes

    d = load_diabetes()
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(d.target), generator=g)
    x = torch.tensor(d.data, dtype=torch.float32)[order]
    y = torch.tensor(d.target, dtype=torch.float32)[order].unsqueeze(1)
    x = _standardised(x, n_train)
    if standardise_target:
        y = _standardised(y, n_train)
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])
