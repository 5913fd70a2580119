"""Looking at a data set (recipe step 1): label counts, sample hashes for exact duplicates, the
hardest samples, and a bounded, deterministic way to read a loader's data set.

Nothing here imports Lightning.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    TensorDataset,
    default_collate,
)

from recipe_callbacks.core.pictures import bar_chart
from recipe_callbacks.core.task import Task, class_first, is_binary_valued

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def label_counts(target: torch.Tensor, num_classes: int | None = None) -> torch.Tensor:
    """How often each class index occurs in ``target`` (any shape), as an int64 ``(C,)`` tensor.

    Negative entries (an ``ignore_index`` such as -100) are not counted; bool / 0-1 float targets
    count as classes 0 and 1.

    Example:
        >>> label_counts(torch.tensor([0, 2, 2, -100]), num_classes=4).tolist()
        [1, 0, 2, 0]
    """
    labels = target.detach().cpu().long().flatten()
    labels = labels[labels >= 0]
    size = max(num_classes or 0, int(labels.max()) + 1 if labels.numel() else 0)
    return torch.bincount(labels, minlength=size)


def imbalance_ratio(counts: torch.Tensor) -> float:
    """Largest class count over the smallest one (classes with count 0 make it infinite).

    Example:
        >>> imbalance_ratio(torch.tensor([90, 10]))
        9.0
        >>> imbalance_ratio(torch.tensor([5, 0]))
        inf
    """
    c = counts.to(torch.float64)
    if c.numel() == 0 or float(c.max()) <= 0:
        return math.nan
    low = float(c.min())
    return math.inf if low <= 0 else float(c.max()) / low


def sample_hashes(x: torch.Tensor) -> list[bytes]:
    """A 16-byte digest of each sample's exact contents (dtype, shape and bytes) along dim 0.

    Two samples hash alike only when they are bit-for-bit equal (up to a negligible chance).

    Example:
        >>> h = sample_hashes(torch.tensor([[1.0, 2.0], [3.0, 4.0], [1.0, 2.0]]))
        >>> h[0] == h[2], h[0] == h[1]
        (True, False)
    """
    data = x.detach().cpu().contiguous()
    prefix = f"{data.dtype}{tuple(data.shape[1:])}".encode()
    if data.dtype == torch.bfloat16:
        data = data.view(torch.int16)
    arr = data.numpy()
    return [hashlib.blake2b(prefix + arr[i].tobytes(), digest_size=16).digest() for i in range(arr.shape[0])]


def shared_samples(train_hashes: Sequence[bytes], val_hashes: Sequence[bytes]) -> list[int]:
    """Positions in ``val_hashes`` of samples that also occur in ``train_hashes``.

    Example:
        >>> shared_samples([b"a", b"b"], [b"c", b"b", b"b"])
        [1, 2]
    """
    seen = set(train_hashes)
    return [i for i, h in enumerate(val_hashes) if h in seen]


def top_k_hardest(losses: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest losses, largest first (NaN counts as largest).

    Example:
        >>> top_k_hardest(torch.tensor([0.1, 3.0, 0.5, 2.0]), 2).tolist()
        [1, 3]
    """
    values = torch.nan_to_num(losses.detach().to(torch.float64).flatten(), nan=math.inf)
    k = min(k, values.numel())
    return torch.topk(values, k, largest=True, sorted=True).indices


def looks_like_images(x: torch.Tensor) -> bool:
    """A batch ``(N, C, H, W)`` with 1 or 3 channels and both sides at least 4 pixels.

    Example:
        >>> looks_like_images(torch.zeros(2, 1, 8, 8)), looks_like_images(torch.zeros(2, 64))
        (True, False)
    """
    return x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[2] >= 4 and x.shape[3] >= 4


def _plain_sampler(loader: DataLoader[Any]) -> bool:
    return type(loader.sampler) in (SequentialSampler, RandomSampler, DistributedSampler)


#: Samples per batch, at most, of a loader that only reads the data (no model runs on its batches).
READ_BATCH = 256


def bounded_loader(
    loader: DataLoader[Any], max_samples: int, seed: int = 0, *, reading: bool = False
) -> tuple[DataLoader[Any], int]:
    """A loader over at most ``max_samples`` samples of ``loader``'s data set, with its collate
    function and batch size, in the main process, the same on every process. ``reading=True``, for
    a pass that only reads the data (hashes, labels, inputs; no model runs on the batches): batches
    of up to eight times the batch size, at most :data:`READ_BATCH` samples (the loader's own
    per-batch work, most of the time of reading small samples, paid fewer times).

    The whole data set when it is small; otherwise a random subset drawn with its own generator
    seeded by ``seed`` (the global RNG is not touched). A loader with a custom sampler (e.g. a
    ``WeightedRandomSampler``) keeps its sampling: the first ``max_samples`` indices it yields are
    used, since they are what training sees (that sampler may draw from the global RNG: call this
    under an isolated RNG). Returns the loader and the number of samples it
    covers (``-1`` for an iterable data set, whose length is unknown).

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> dl, n = bounded_loader(DataLoader(TensorDataset(torch.arange(10.0)), batch_size=4), 6)
        >>> n, sum(len(b[0]) for b in dl)
        (6, 6)
    """
    dataset: Dataset[Any] = loader.dataset
    batch_size = loader.batch_size or (
        getattr(loader.batch_sampler, "batch_size", None) if loader.batch_sampler is not None else None
    ) or 1
    if reading and loader.batch_size:  # not where the loader's batches come whole from the data set
        batch_size = max(batch_size, min(READ_BATCH, 8 * batch_size))
    # its own generator: iterating a DataLoader draws a base seed, which must not come from the global RNG
    common: dict[str, Any] = {
        "batch_size": batch_size, "collate_fn": loader.collate_fn, "num_workers": 0,
        "generator": torch.Generator().manual_seed(seed),
    }
    if isinstance(dataset, IterableDataset):
        return DataLoader(_Take(dataset, max_samples), **common), -1
    size = len(dataset)  # type: ignore[arg-type]
    indices: list[int] | None = None  # the whole data set
    if not _plain_sampler(loader) and loader.sampler is not None:
        picked: list[int] = []
        for index in loader.sampler:
            picked.append(int(index))
            if len(picked) >= max_samples:
                break
        indices = picked
    elif size > max_samples:
        generator = torch.Generator().manual_seed(seed)
        indices = sorted(torch.randperm(size, generator=generator)[:max_samples].tolist())
    if type(dataset) is TensorDataset and loader.collate_fn is default_collate:  # not a subclass: its own items
        rows = _TensorRows(dataset, range(size) if indices is None else indices)
        return DataLoader(rows, shuffle=False, **{**common, "collate_fn": _as_collated}), len(rows)
    if indices is None:
        return DataLoader(dataset, shuffle=False, **common), size
    return DataLoader(Subset(dataset, indices), shuffle=False, **common), len(indices)


class _TensorRows(Subset[Any]):
    """Rows of a ``TensorDataset`` read a batch at a time: ``__getitems__`` cuts each tensor once,
    which is what ``default_collate`` makes of the rows read one by one (a list of the stacked
    tensors), without a call per sample. A ``Subset`` (``indices`` maps a position to the row).

    Example:
        >>> ds = TensorDataset(torch.arange(6.0).reshape(3, 2), torch.tensor([0, 1, 0]))
        >>> rows = _TensorRows(ds, [0, 2])
        >>> [t.tolist() for t in rows.__getitems__([1, 0])] == [t.tolist() for t in default_collate([ds[2], ds[0]])]
        True
    """

    def __init__(self, dataset: TensorDataset, indices: Sequence[int]) -> None:
        super().__init__(dataset, indices)
        self.tensors = dataset.tensors
        self._rows = torch.tensor(list(indices), dtype=torch.long)

    def __getitems__(self, batch: list[int]) -> list[torch.Tensor]:  # type: ignore[override]
        where = self._rows[torch.as_tensor(batch, dtype=torch.long)]
        return [t[where] for t in self.tensors]


def _as_collated(batch: Any) -> Any:
    """The collate function of :class:`_TensorRows`' loader: its batches come collated."""
    return batch


class _Take(IterableDataset[Any]):
    """The first ``n`` items of an iterable data set."""

    def __init__(self, dataset: IterableDataset[Any], n: int) -> None:
        self.dataset = dataset
        self.n = n

    def __iter__(self) -> Iterator[Any]:
        for i, item in enumerate(self.dataset):
            if i >= self.n:
                return
            yield item


def first_dataloader(loaders: Any) -> DataLoader[Any] | None:
    """The first ``DataLoader`` in a loader, or a list / tuple / dict of loaders (nested).

    Example:
        >>> dl = DataLoader(range(3))
        >>> first_dataloader({"a": [dl]}) is dl, first_dataloader(None)
        (True, None)
    """
    if isinstance(loaders, DataLoader):
        return loaders
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        for item in loaders:
            found = first_dataloader(item)
            if found is not None:
                return found
    return None


def all_dataloaders(loaders: Any) -> list[DataLoader[Any]]:
    """Every ``DataLoader`` in a loader, or a list / tuple / dict of loaders (nested), in order."""
    if isinstance(loaders, DataLoader):
        return [loaders]
    if isinstance(loaders, dict):
        loaders = list(loaders.values())
    if isinstance(loaders, (list, tuple)):
        return [dl for item in loaders for dl in all_dataloaders(item)]
    return []


def describe(value: torch.Tensor) -> str:
    """A target or prediction in a few characters: its value, or its shape.

    Example:
        >>> describe(torch.tensor(3)), describe(torch.tensor(0.25)), describe(torch.zeros(2, 2))
        ('3', '0.25', '(2, 2) tensor')
    """
    if value.numel() == 1:
        v = value.item()
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    return f"{tuple(value.shape)} tensor"


def predictions(logits: torch.Tensor, target: torch.Tensor, task: Task) -> list[str]:
    """What the model predicts for each sample, in a few characters: the class, ``p=`` of the
    positive class, the value, or the shape of a map.

    Example:
        >>> predictions(torch.tensor([[0.0, 2.0], [3.0, 0.0]]), torch.tensor([1, 1]), "multiclass")
        ['1', '0']
    """
    out = logits.detach().to(torch.float64)
    if task == "multiclass":
        out = class_first(out, target)
    n = out.shape[0]
    if task == "multiclass":
        if out.ndim == 2:
            return [str(int(c)) for c in out.argmax(dim=1)]
        return [f"{tuple(out.shape[2:])} map" for _ in range(n)]
    flat = out.reshape(n, -1)
    if task == "binary":
        return [f"p={float(p):.2f}" if flat.shape[1] == 1 else "map" for p in flat.sigmoid()[:, 0]]
    return [f"{float(v):.3g}" for v in flat.mean(dim=1)]


class Hardest:
    """The ``k`` highest-loss samples seen so far: inputs, targets, predictions and positions, and
    the sum and count of every loss seen.

    Example:
        >>> h = Hardest(2)
        >>> h.add(torch.tensor([0.1, 3.0, 0.5]), torch.zeros(3, 1), torch.tensor([0, 1, 0]), ["0", "0", "1"])
        >>> h.positions.tolist(), h.targets, h.seen
        ([1, 2], ['1', '0'], 3)
    """

    def __init__(self, k: int) -> None:
        self.k = k
        self.losses = torch.zeros(0, dtype=torch.float64)
        self.positions = torch.zeros(0, dtype=torch.long)
        self.inputs: list[torch.Tensor] = []
        self.targets: list[str] = []
        self.predictions: list[str] = []
        self.total = 0.0
        self.seen = 0

    def add(self, losses: torch.Tensor, x: torch.Tensor, y: torch.Tensor, preds: list[str]) -> None:
        """Add one batch: its losses (on the host), inputs, targets and predictions in words."""
        start = self.seen
        all_losses = torch.cat([self.losses, losses.cpu().to(torch.float64)])
        positions = torch.cat([self.positions, torch.arange(start, start + losses.numel())])
        keep = top_k_hardest(all_losses, self.k)
        inputs = self.inputs + [x[i].detach().cpu() for i in range(x.shape[0])]
        targets = self.targets + [describe(y[i]) for i in range(y.shape[0])]
        predictions = self.predictions + preds
        idx = keep.tolist()
        self.losses, self.positions = all_losses[keep], positions[keep]
        self.inputs = [inputs[i] for i in idx]
        self.targets = [targets[i] for i in idx]
        self.predictions = [predictions[i] for i in idx]
        self.total += float(losses.sum())
        self.seen += losses.numel()


# What the label counts show: a healthy spread, one class only, or an imbalance beyond the limit.
LabelVerdict = Literal["pass", "one_class", "imbalanced"]


def judge_labels(counts: torch.Tensor, max_imbalance: float, dense: bool) -> LabelVerdict:
    """The verdict on training label counts: every label one class, or (not for dense labels, one
    per token or pixel, where imbalance is the rule) the largest class more than ``max_imbalance``
    times the smallest (a class that never occurs counts as infinitely rare).

    Example:
        >>> judge_labels(torch.tensor([90, 10]), 20.0, False), judge_labels(torch.tensor([99, 1]), 20.0, False)
        ('pass', 'imbalanced')
        >>> judge_labels(torch.tensor([0, 7]), 20.0, True)
        'one_class'
    """
    if int((counts > 0).sum()) == 1:
        return "one_class"
    if imbalance_ratio(counts) > max_imbalance and not dense:
        return "imbalanced"
    return "pass"


def label_chart(counts: torch.Tensor, of: str, max_imbalance: float, max_bars: int) -> Figure:
    """A bar per class of the label counts (the ``max_bars`` most frequent when there are more),
    missing and rare classes (or the only class) flagged."""
    ratio = imbalance_ratio(counts)
    shown = torch.arange(counts.numel())
    title = f"labels of {of} samples, imbalance {ratio:.3g}:1"
    if counts.numel() > max_bars:  # e.g. a vocabulary: the most frequent classes, most frequent first
        shown = counts.argsort(descending=True, stable=True)[:max_bars]
        title += f", top {max_bars} of {counts.numel()} classes"
    largest = int(counts.max())
    rare = [i for i, c in enumerate(shown.tolist()) if largest > max_imbalance * int(counts[c])]
    flagged_label = f"missing or over {max_imbalance:g}x rarer than the largest"
    if int((counts > 0).sum()) == 1:  # every label is the same class
        rare, flagged_label = [i for i, c in enumerate(shown.tolist()) if counts[c] > 0], "the only class"
    return bar_chart(
        [str(int(c)) for c in shown], counts[shown].tolist(),
        title=f"DataInspector: {title}; look for missing or rare classes",
        xlabel="class", ylabel="training samples", flagged=rare, flagged_label=flagged_label,
    )


def label_table(counts: torch.Tensor) -> str:
    """A Markdown table of the samples and share of each class."""
    total = int(counts.sum())
    rows = ["| class | samples | share |", "|---|---|---|"]
    rows += [f"| {c} | {int(n)} | {float(n) / total:.2%} |" for c, n in enumerate(counts)]
    return "\n".join(rows)


def hardest_table(hardest: Hardest, positions: torch.Tensor) -> str:
    """A Markdown table of the hardest samples: rank, sample index, loss, label, prediction."""
    rows = ["| rank | sample | loss | label | prediction |", "|---|---|---|---|---|"]
    for r, (pos, loss) in enumerate(zip(positions.tolist(), hardest.losses.tolist(), strict=False)):
        loss_text = f"{loss:.4g}" if math.isfinite(loss) else str(loss)
        rows.append(f"| {r + 1} | {pos} | {loss_text} | {hardest.targets[r]} | {hardest.predictions[r]} |")
    return "\n".join(rows)


def is_class_target(y: torch.Tensor) -> bool:
    """Class labels by :mod:`~recipe_callbacks.core.task`'s rules: integer or bool, or float 0/1.

    Example:
        >>> is_class_target(torch.tensor([0, 3])), is_class_target(torch.tensor([0.5, 1.0]))
        (True, False)
    """
    return not y.is_floating_point() or is_binary_valued(y)
