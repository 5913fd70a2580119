"""Leakage between training and validation data beyond exact copies, and "too good to be true".

Near-duplicates (recipe step 1: become one with the data) are found by a nearest-neighbour search
on cheap signatures of the inputs, chosen by what the inputs are:

- images ``(N, C, H, W)``: a grey-level thumbnail (``size x size`` average pooling), standardised
  per sample, so that a copy that was re-encoded, brightened, or slightly noised still matches;
  near means a root-mean-square difference of at most ``tolerance`` (in units of the thumbnail's
  own standard deviation);
- token sequences (integer ``(N, T)``): near means the same token at the same position in at least
  ``agreement`` of the positions (positions where both sequences are padding are left out).
  Overlapping windows of one text share substrings at *shifted* positions and are not near in
  this sense: a language model's windows legitimately overlap;
- other inputs (tabular features, ...): the flattened features standardised by the training
  set's column statistics; near as for images.

Nothing here imports Lightning.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from recipe_callbacks.core.eval_stats import MeanEstimate, estimate, sample_sums

InputKind = Literal["image", "tokens", "features"]
# Above this many features per sample, signatures are average-pooled to this many.
MAX_FEATURES = 1024
# Integer rows at least this long are token sequences.
MIN_TOKENS = 16


def input_kind(x: torch.Tensor) -> InputKind:
    """How a batch of inputs is compared.

    Example:
        >>> input_kind(torch.zeros(2, 1, 8, 8)), input_kind(torch.zeros(2, 16, dtype=torch.long))
        ('image', 'tokens')
        >>> input_kind(torch.zeros(2, 30)), input_kind(torch.zeros(2, 5, dtype=torch.long))
        ('features', 'features')
    """
    if x.ndim == 4 and x.shape[1] in (1, 3, 4) and x.shape[2] >= 4 and x.shape[3] >= 4:
        return "image"
    if x.ndim == 2 and x.shape[1] >= MIN_TOKENS and not x.is_floating_point() and x.dtype != torch.bool:
        return "tokens"  # shorter integer rows are more likely coded tabular columns than text
    return "features"


def _standardize_rows(v: torch.Tensor) -> torch.Tensor:
    v = v - v.mean(dim=1, keepdim=True)
    std = v.std(dim=1, keepdim=True, unbiased=False)
    return torch.where(std > 0, v / std.clamp_min(1e-12), torch.zeros_like(v))


def image_signatures(x: torch.Tensor, size: int = 8) -> torch.Tensor:
    """``(N, size*size)`` float32: grey-level thumbnails, standardised per sample.

    Example:
        >>> s = image_signatures(torch.rand(3, 3, 32, 32))
        >>> s.shape, bool(torch.allclose(s.mean(dim=1), torch.zeros(3), atol=1e-5))
        (torch.Size([3, 64]), True)
    """
    grey = x.detach().to(torch.float32).mean(dim=1, keepdim=True)  # (N, 1, H, W)
    thumb = F.adaptive_avg_pool2d(grey, (min(size, x.shape[2]), min(size, x.shape[3])))
    return _standardize_rows(thumb.flatten(1))


def feature_signatures(x: torch.Tensor) -> torch.Tensor:
    """``(N, D)`` float32: flattened features, average-pooled to at most :data:`MAX_FEATURES`."""
    flat = x.detach().to(torch.float32).reshape(x.shape[0], -1)
    if flat.shape[1] > MAX_FEATURES:
        flat = F.adaptive_avg_pool1d(flat.unsqueeze(1), MAX_FEATURES).squeeze(1)
    return flat


def standardize_columns(train: torch.Tensor, val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sets standardised by the training set's per-column mean and standard deviation
    (constant columns are left out: they tell no sample from another)."""
    mean = train.mean(dim=0, keepdim=True)
    std = train.std(dim=0, keepdim=True, unbiased=False)
    keep = std.squeeze(0) > 0
    return ((train - mean) / std.clamp_min(1e-12))[:, keep], ((val - mean) / std.clamp_min(1e-12))[:, keep]


@dataclass(frozen=True)
class Nearest:
    """For every validation sample: its nearest training sample and how near it is.

    ``distance`` is the root-mean-square difference of the signatures (continuous inputs) or
    ``1 - agreement`` (tokens); 0 for an exact copy of the signature.
    """

    distance: torch.Tensor  # (N_val,) float64
    index: torch.Tensor  # (N_val,) int64 into the training signatures


def nearest_continuous(train: torch.Tensor, val: torch.Tensor, chunk: int = 512) -> Nearest:
    """Nearest training signature of every validation signature, by RMS difference.

    Example:
        >>> train = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
        >>> n = nearest_continuous(train, torch.tensor([[0.9, 1.1], [5.0, 5.0]]))
        >>> n.index.tolist(), [round(d, 3) for d in n.distance.tolist()]
        ([1, 1], [0.1, 4.0])
    """
    dims = max(train.shape[1], 1)
    distances, indices = [], []
    t = train.to(torch.float64)
    for start in range(0, val.shape[0], chunk):
        d = torch.cdist(val[start : start + chunk].to(torch.float64), t)  # (chunk, N_train)
        best, idx = d.min(dim=1)
        distances.append(best / math.sqrt(dims))
        indices.append(idx)
    if not distances:
        return Nearest(torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.long))
    return Nearest(torch.cat(distances), torch.cat(indices))


def padding_mask(tokens: torch.Tensor) -> torch.Tensor:
    """``(N, T)`` bool: the positions of right or left padding, i.e. a run of two or more equal
    tokens that reaches the end (or the start) of the sequence.

    Example:
        >>> padding_mask(torch.tensor([[5, 6, 0, 0], [0, 0, 7, 8], [1, 2, 3, 3]])).int().tolist()
        [[0, 0, 1, 1], [1, 1, 0, 0], [0, 0, 1, 1]]
    """

    def trailing(t: torch.Tensor) -> torch.Tensor:
        run = torch.flip(torch.cumprod(torch.flip((t == t[:, -1:]).long(), [1]), dim=1), [1]).bool()
        return run & (run.sum(dim=1, keepdim=True) >= 2)

    return trailing(tokens) | torch.flip(trailing(torch.flip(tokens, [1])), [1])


def _block_keys(tokens: torch.Tensor, real: torch.Tensor, blocks: int) -> torch.Tensor:
    """``(N, blocks)`` int64 keys of equal-length position blocks (wrapping polynomial hash; 0 for a
    block that is all padding)."""
    n, length = tokens.shape
    size = -(-length // blocks)
    pad = size * blocks - length
    t = F.pad(tokens, (0, pad), value=-1).reshape(n, blocks, size)
    r = F.pad(real, (0, pad), value=False).reshape(n, blocks, size)
    weights = torch.randint(1, 2**62, (size,), generator=torch.Generator().manual_seed(0))
    keys = ((t + 2) * weights).sum(dim=2) * 1_000_003 + torch.arange(blocks)  # the block's position in the key
    return torch.where(r.any(dim=2), keys, torch.zeros_like(keys))


def nearest_tokens(
    train: torch.Tensor, val: torch.Tensor, agreement: float = 0.9, max_candidates: int = 256
) -> Nearest:
    """Nearest training sequence of every validation sequence by positional agreement (same token
    at the same position), leaving out positions where both sequences are padding
    (:func:`padding_mask`).

    Two sequences that agree on at least ``agreement`` of their positions share at least one
    identical block when cut into ``ceil(T * (1 - agreement)) + 1`` blocks (pigeonhole), so only
    training sequences that share a block at the same place with the validation sequence are
    compared exactly (at most ``max_candidates`` of them; blocks that a large share of the
    training set holds, such as runs of spaces, do not make candidates). A validation sequence
    with no candidate gets distance 1.

    Example:
        >>> train = torch.tensor([[1, 2, 3, 4, 0, 0], [5, 6, 7, 8, 0, 0]])  # 0: padding
        >>> val = torch.tensor([[1, 2, 3, 9, 0, 0], [2, 3, 4, 5, 0, 0]])  # a near copy; a shifted window
        >>> n = nearest_tokens(train, val, agreement=0.7)
        >>> n.index.tolist()[0], n.distance.tolist()
        (0, [0.25, 1.0])
    """
    length = min(train.shape[1], val.shape[1])
    t, v = train[:, :length].to(torch.long), val[:, :length].to(torch.long)
    t_real, v_real = ~padding_mask(t), ~padding_mask(v)  # (N, T)
    blocks = min(length, math.ceil(length * (1.0 - agreement)) + 1)
    t_keys, v_keys = _block_keys(t, t_real, blocks), _block_keys(v, v_real, blocks)
    index: dict[int, list[int]] = {}
    for i, row in enumerate(t_keys.tolist()):
        for key in row:
            if key != 0:
                index.setdefault(key, []).append(i)
    common = max(50, int(0.02 * t.shape[0]))
    distances = torch.ones(v.shape[0], dtype=torch.float64)
    indices = torch.zeros(v.shape[0], dtype=torch.long)
    for j, row in enumerate(v_keys.tolist()):
        found: set[int] = set()
        for key in row:
            hits = index.get(key, [])
            if key != 0 and len(hits) <= common:
                found.update(hits)
        if not found:
            continue
        candidates = torch.tensor(sorted(found)[:max_candidates])
        same = t[candidates] == v[j]  # (c, T)
        counted = t_real[candidates] | v_real[j]
        agree = (same & counted).sum(dim=1).to(torch.float64) / counted.sum(dim=1).clamp_min(1).to(torch.float64)
        best, at = agree.max(dim=0)
        distances[j], indices[j] = 1.0 - best, candidates[at]
    return Nearest(distances, indices)


def wilson_lower(successes: float, n: float, z: float = 1.96) -> float:
    """Lower end of the Wilson score interval of a proportion.

    Example:
        >>> round(wilson_lower(360, 360), 4), round(wilson_lower(114, 114), 4)
        (0.9894, 0.9674)
    """
    if n <= 0:
        return 0.0
    p = successes / n
    centre = p + z * z / (2 * n)
    spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - spread) / (1 + z * z / n)


def signatures(kind: InputKind, batches: list[torch.Tensor], thumbnail: int, limit: int) -> torch.Tensor:
    """The signatures of at most ``limit`` inputs read in ``batches``, one row per sample: thumbnails
    of images, tokens cut to the shortest sequence, flattened features.

    Example:
        >>> tuple(signatures("tokens", [torch.zeros(2, 20).long(), torch.zeros(3, 18).long()], 8, 4).shape)
        (4, 18)
    """
    if kind == "image":
        return torch.cat([image_signatures(x, thumbnail) for x in batches])[:limit]
    if kind == "tokens":
        length = min(int(x.shape[1]) for x in batches)
        return torch.cat([x[:, :length] for x in batches])[:limit]
    return torch.cat([feature_signatures(x) for x in batches])[:limit]


@dataclass(frozen=True)
class NearCount:
    """How many validation samples have a near-duplicate (their nearest training sample within the limit)."""

    count: int
    identical: int  # at distance 0
    checked: int
    positions: list[int]  # the first near validation samples, for the table and the pictures

    @property
    def fraction(self) -> float:
        return self.count / max(self.checked, 1)


def count_near(nearest: Nearest, limit: float, shown: int = 8) -> NearCount:
    """The validation samples whose nearest training sample is within ``limit`` (a hair of rounding allowed).

    Example:
        >>> found = count_near(Nearest(torch.tensor([0.0, 0.5, 0.05]), torch.tensor([3, 1, 2])), 0.07)
        >>> found.count, found.identical, found.positions, round(found.fraction, 3)
        (2, 1, [0, 2], 0.667)
    """
    near = nearest.distance <= limit + 1e-12
    positions = near.nonzero().flatten()[:shown].tolist()
    return NearCount(int(near.sum()), int((nearest.distance == 0).sum()), int(nearest.distance.numel()), positions)


@dataclass(frozen=True)
class TooGood:
    """The too-good-to-be-true flags of one evaluation of training and validation samples."""

    ratio: float  # validation loss over training loss
    far_below: bool  # the validation loss far below the training loss, intervals apart
    accuracy_low: float | None  # the lower end of the validation accuracy's 95% interval
    too_accurate: bool  # that lower end above the limit, in the first epoch


def too_good(train_loss: MeanEstimate, val_loss: MeanEstimate, val_accuracy: MeanEstimate | None,
             max_ratio: float, max_accuracy: float, first_epoch: bool) -> TooGood:
    """Flag a validation loss below ``max_ratio`` times the training loss (intervals apart), and a
    validation accuracy whose Wilson interval starts at ``max_accuracy`` or above in the first epoch.

    Example:
        >>> from recipe_callbacks.core.eval_stats import estimate
        >>> t, v = estimate(100, 200.0, 410.0), estimate(100, 20.0, 5.0)
        >>> flags = too_good(t, v, estimate(100, 100.0, 100.0), 0.5, 0.98, first_epoch=True)
        >>> flags.far_below, flags.too_accurate
        (True, False)
    """
    ratio = val_loss.mean / train_loss.mean if train_loss.mean > 0 else math.nan
    apart = math.isfinite(val_loss.half_width) and val_loss.high < train_loss.low
    far_below = math.isfinite(ratio) and ratio < max_ratio and apart
    if val_accuracy is None or val_accuracy.count <= 0:
        return TooGood(ratio, far_below, None, False)
    low = wilson_lower(val_accuracy.mean * val_accuracy.count, val_accuracy.count)
    return TooGood(ratio, far_below, low, low >= max_accuracy and first_epoch)


#: The too-good evaluation stops once this many samples of each set rule both flags out.
MIN_RULED_OUT = 32
#: The normal quantile of the intervals that rule the flags out: 99.9%, wider than the 95% of the
#: flags themselves, so that stopping early does not let a flag slip through.
RULED_OUT_Z = 3.29


def wilson_upper(successes: float, n: float, z: float = 1.96) -> float:
    """Upper end of the Wilson score interval of a proportion.

    Example:
        >>> round(wilson_upper(0, 360), 4), round(wilson_upper(18, 20), 3)
        (0.0106, 0.972)
    """
    return 1.0 - wilson_lower(n - successes, n, z) if n > 0 else 1.0


def nothing_too_good(train_loss: MeanEstimate, val_loss: MeanEstimate, val_accuracy: MeanEstimate | None,
                     max_ratio: float, max_accuracy: float, first_epoch: bool) -> bool:
    """True when more samples cannot raise either flag of :func:`too_good`: with at least
    :data:`MIN_RULED_OUT` samples of each set, the validation loss at the low end of its
    :data:`RULED_OUT_Z` interval is at least ``max_ratio`` times the training loss at the high end
    of its own, and (in the first epoch) the validation accuracy's Wilson interval ends below
    ``max_accuracy``. What a healthy model shows after a few batches.

    Example:
        >>> from recipe_callbacks.core.eval_stats import estimate
        >>> t, v = estimate(64, 128.0, 272.0), estimate(64, 122.0, 250.0)  # both about 2, spread 0.5
        >>> nothing_too_good(t, v, estimate(64, 40.0, 40.0), 0.5, 0.98, first_epoch=True)
        True
        >>> nothing_too_good(t, estimate(64, 32.0, 17.0), None, 0.5, 0.98, first_epoch=False)  # val near 0.5
        False
        >>> nothing_too_good(t, v, estimate(64, 64.0, 64.0), 0.5, 0.98, first_epoch=True)  # all right
        False
    """
    if min(train_loss.count, val_loss.count) < MIN_RULED_OUT:
        return False
    train_high = train_loss.mean + RULED_OUT_Z * train_loss.stderr
    val_low = val_loss.mean - RULED_OUT_Z * val_loss.stderr
    if not (math.isfinite(train_high) and math.isfinite(val_low) and val_low >= max_ratio * train_high):
        return False
    if not first_epoch or val_accuracy is None or val_accuracy.count <= 0:
        return True
    hits = val_accuracy.mean * val_accuracy.count
    return wilson_upper(hits, val_accuracy.count, RULED_OUT_Z) < max_accuracy


def find_near(
    kind: InputKind, train_x: list[torch.Tensor], val_x: list[torch.Tensor], *, thumbnail: int, limit: int,
    tolerance: float, token_agreement: float,
) -> tuple[Nearest, float, int]:
    """The nearest training sample of every validation sample (at most ``limit`` of each), the
    distance within which it is a near-duplicate, and how many training samples were searched.

    Raises:
        RuntimeError: inputs of varying shapes.

    Example:
        >>> x = [torch.arange(40.0).reshape(4, 10)]
        >>> nearest, within, n = find_near("features", x, x, thumbnail=8, limit=10, tolerance=0.07,
        ...                                token_agreement=0.9)
        >>> nearest.distance.tolist(), within, n
        ([0.0, 0.0, 0.0, 0.0], 0.07, 4)
    """
    train, val = signatures(kind, train_x, thumbnail, limit), signatures(kind, val_x, thumbnail, limit)
    if kind == "tokens":
        return nearest_tokens(train, val, token_agreement), 1.0 - token_agreement, int(train.shape[0])
    if kind == "features":
        train, val = standardize_columns(train, val)
    return nearest_continuous(train, val), tolerance, int(train.shape[0])


class Tally:
    """Running ``[count, sum, sum of squares]`` of per-sample losses and of accuracy hits (the
    accuracy is dropped once a batch has none).

    Example:
        >>> tally = Tally()
        >>> tally.add(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 0.0]))
        >>> loss, accuracy = tally.estimates()
        >>> tally.count, loss.mean, accuracy.mean
        (2.0, 2.0, 0.5)
    """

    def __init__(self) -> None:
        self.loss = torch.zeros(3, dtype=torch.float64)
        self.hits: torch.Tensor | None = torch.zeros(3, dtype=torch.float64)

    @property
    def count(self) -> float:
        return float(self.loss[0])

    def add(self, losses: torch.Tensor, hits: torch.Tensor | None) -> None:
        self.loss += sample_sums(losses.cpu())
        self.hits = None if hits is None or self.hits is None else self.hits + sample_sums(hits.cpu())

    def estimates(self) -> tuple[MeanEstimate, MeanEstimate | None]:
        return estimate(*self.loss.tolist()), estimate(*self.hits.tolist()) if self.hits is not None else None


def pair_pictures(
    val: torch.Tensor, train: torch.Tensor, positions: list[int], nearest: Nearest
) -> tuple[torch.Tensor, list[str]] | None:
    """Each near validation sample beside its nearest training sample, as images and captions for a
    two-column grid; ``None`` for inputs that are not 1- or 3-channel images.

    Example:
        >>> pictures, captions = pair_pictures(torch.zeros(2, 1, 4, 4), torch.ones(3, 1, 4, 4), [1],
        ...                                    Nearest(torch.zeros(2), torch.tensor([0, 2])))
        >>> tuple(pictures.shape), captions
        ((2, 1, 4, 4), ['val 1', 'train 2'])
    """
    if val.shape[1] not in (1, 3):
        return None
    pictures, captions = [], []
    for p in positions:
        i = int(nearest.index[p])
        pictures += [val[p], train[i]]
        captions += [f"val {p}", f"train {i}"]
    return torch.stack(pictures), captions


Batches = Iterator["tuple[torch.Tensor, torch.Tensor | None] | None"]


def tally_in_turn(streams: Sequence[Batches], limit: int, enough: Callable[[list[Tally]], bool]) -> list[Tally] | None:
    """Tally per-sample ``(losses, hits)`` batches of several streams, a batch of each in turn, each
    stream up to ``limit`` samples, until ``enough`` of the tallies so far (checked after each turn);
    ``None`` when a stream yields ``None`` (it could not go on).

    Example:
        >>> def stream(value):
        ...     while True:
        ...         yield torch.full((4,), value), None
        >>> tallies = tally_in_turn([stream(1.0), stream(2.0)], 16, lambda t: t[0].count >= 8)
        >>> [t.count for t in tallies]
        [8.0, 8.0]
        >>> [t.count for t in tally_in_turn([stream(1.0), iter([(torch.ones(2), None)])], 6, lambda t: False)]
        [8.0, 2.0]
    """
    tallies = [Tally() for _ in streams]
    live = [True] * len(streams)
    while any(live):
        for i in (i for i, on in enumerate(live) if on):
            try:
                got = next(streams[i])
            except StopIteration:
                live[i] = False
                continue
            if got is None:
                return None
            tallies[i].add(*got)
            live[i] = tallies[i].count < limit
        if enough(tallies):
            break
    return tallies
