"""Reading samples from the Trainer's loaders outside the loops: the validation loaders before
validation ran, the inputs of a bounded number of samples, and a few training batches read again
from the data set for the checks that judge the model at init. Each read goes through a bounded
loader of its own under an isolated RNG: the running loaders and the global RNG are not touched."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.pytorch.utilities.seed import isolate_rng
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset

from recipe_callbacks.core.data_stats import all_dataloaders, bounded_loader, first_dataloader
from recipe_callbacks.core.short_training import take_samples
from recipe_callbacks.core.skip import CheckSkipped
from recipe_callbacks.plumbing.batch import ResolvedBatch

if TYPE_CHECKING:
    import lightning.pytorch as pl


def val_dataloaders(trainer: pl.Trainer) -> list[DataLoader[Any]]:
    """The validation loaders of a fit, set up now if validation has not run yet (``[]`` when there
    are none, or when setting them up fails: that is the user's to meet in validation, not here)."""
    if trainer.val_dataloaders is None:
        try:
            trainer.fit_loop.epoch_loop.val_loop.setup_data()
        except Exception:
            return []
    return all_dataloaders(trainer.val_dataloaders)


def eval_dataloaders(trainer: pl.Trainer, stage: str) -> list[Any]:
    """The loaders of the running evaluation, ``stage`` ``"val"`` or ``"test"``, in the order of
    their ``dataloader_idx`` (any iterable the Trainer takes, not only ``DataLoader``)."""
    loaders = trainer.test_dataloaders if stage == "test" else trainer.val_dataloaders
    if loaders is None:
        return []
    if isinstance(loaders, Mapping):
        return list(loaders.values())
    return list(loaders) if isinstance(loaders, (list, tuple)) else [loaders]


def partial_run(trainer: pl.Trainer) -> str:
    """``"fast_dev_run=..."`` or ``"overfit_batches=..."`` when the loops read part of the loaders on
    purpose, else ``""``."""
    fast_dev_run = getattr(trainer, "fast_dev_run", False)  # set by the Trainer at runtime, not typed
    if fast_dev_run:
        return f"fast_dev_run={fast_dev_run}"
    overfit = getattr(trainer, "overfit_batches", 0)
    return f"overfit_batches={overfit}" if overfit else ""


def user_sampler(sampler: Any) -> Any:
    """The sampler that decides which indices an evaluation visits: the loader's own, the user's
    sampler inside Lightning's ``DistributedSamplerWrapper`` under DDP, ``None`` for a plain
    ``DistributedSampler`` (whose coverage is judged on its own).

    The one read of a private Lightning attribute in the package: the wrapper keeps the user's
    sampler only as ``_sampler`` of its dataset (a ``_DatasetSamplerWrapper``), and no public
    attribute or method gives it back; without it a custom sampler that skips or repeats indices
    would go unseen under DDP.
    """
    if not isinstance(sampler, DistributedSampler):
        return sampler
    return getattr(sampler.dataset, "_sampler", None) if isinstance(sampler, DistributedSamplerWrapper) else None


def read_inputs(
    loader: DataLoader[Any], max_samples: int, seed: int, resolve: Callable[[Any], ResolvedBatch | None]
) -> list[torch.Tensor] | None:
    """The inputs of at most ``max_samples`` samples of ``loader`` (a seeded subset of a larger set),
    batch by batch on the CPU, read under an isolated RNG; ``None`` when ``resolve`` (which reports
    its own skip) finds no input in a batch."""
    bounded, _ = bounded_loader(loader, max_samples, seed, reading=True)
    out: list[torch.Tensor] = []
    read = 0
    with isolate_rng():
        for batch in bounded:
            resolved = resolve(batch)
            if resolved is None:
                return None
            x = resolved.x.detach().cpu()
            if x.ndim == 0:
                x = x.reshape(1)
            out.append(x)
            read += int(x.shape[0])
            if read >= max_samples:
                break
    return out


def sample_batches(trainer: pl.Trainer, device: torch.device, n: int) -> list[Any]:
    """Up to ``n`` training batches read from the data set (not the running loader), on ``device``;
    ``[]`` without a training DataLoader."""
    loader = first_dataloader(trainer.train_dataloader)
    if loader is None:
        return []
    bounded, _ = bounded_loader(loader, n * (loader.batch_size or 1))
    batches: list[Any] = []
    with isolate_rng():
        for batch in bounded:
            batches.append(move_data_to_device(batch, device))
            if len(batches) >= n:
                break
    return batches


def fixed_samples(
    trainer: pl.Trainer, source: str, indices: list[int] | None, num_samples: int,
    resolved: Callable[[Any], ResolvedBatch],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, Any]:
    """Fixed samples to watch over training, read once from the ``source`` (``"val"`` or ``"train"``)
    loader's data set under an isolated RNG: ``indices`` (or the first ``num_samples``; the first
    batch of an iterable data set). Returns CPU copies of their inputs and targets, their dataset
    indices (``None`` for an iterable data set) and, for batches whose input sits in a container, the
    samples as the batch the model's step receives (else ``None``). Raises :class:`CheckSkipped`
    naming the argument to set when they cannot be read."""
    loader = first_dataloader(trainer.val_dataloaders if source == "val" else trainer.train_dataloader)
    if loader is None:
        other = "train" if source == "val" else "val"
        raise CheckSkipped(f"no {source} DataLoader to take the fixed samples from; try source={other!r}", "source")
    try:
        with isolate_rng():  # a dataset's __getitem__ may draw random augmentations
            batch, chosen = _fixed_batch(loader, source, indices, num_samples)
    except CheckSkipped:
        raise
    except Exception as err:  # the user's training must go on
        raise CheckSkipped(f"reading the fixed samples from the {source} data failed ({err!r})", "indices") from err
    found = resolved(batch)
    if found.y is None:
        raise CheckSkipped("the batches have no target to compare the predictions with", "target_key")
    k = len(indices) if indices is not None else num_samples
    x, y = found.x[:k].detach().cpu().clone(), found.y[:k].detach().cpu().clone()
    as_batch = None
    if found.with_input is not None:
        as_batch = move_data_to_device(take_samples(batch, k, int(found.x.shape[0])), "cpu")
    return x, y, None if chosen is None else torch.tensor(chosen, dtype=torch.long), as_batch


def _fixed_batch(
    loader: DataLoader[Any], source: str, indices: list[int] | None, num_samples: int
) -> tuple[Any, list[int] | None]:
    dataset = loader.dataset
    if not isinstance(dataset, IterableDataset) and hasattr(dataset, "__len__") and loader.batch_size is not None:
        size = len(dataset)
        chosen = list(indices) if indices is not None else list(range(min(num_samples, size)))
        bad = [i for i in chosen if i >= size]
        if bad:
            raise CheckSkipped(f"indices {bad} are out of range for a dataset of {size} samples", "indices")
        return loader.collate_fn([dataset[i] for i in chosen]), chosen
    if indices is not None:
        raise CheckSkipped("indices need a map-style dataset (with __len__ and __getitem__)", "indices")
    batch = next(iter(loader), None)  # iterable datasets: the first batch, cut to num_samples
    if batch is None:
        raise CheckSkipped(f"the {source} DataLoader is empty: no fixed samples to take", "source")
    return batch, None
