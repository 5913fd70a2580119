"""Label counts, sample hashes, the hardest samples and the bounded loader, against plain Python."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, Subset, TensorDataset, WeightedRandomSampler

from recipe_callbacks.core.data_stats import (
    all_dataloaders,
    bounded_loader,
    first_dataloader,
    imbalance_ratio,
    label_counts,
    looks_like_images,
    sample_hashes,
    shared_samples,
    top_k_hardest,
)


def test_label_counts_match_a_counter() -> None:
    y = torch.randint(0, 7, (500,), generator=torch.Generator().manual_seed(0))
    counter = Counter(y.tolist())
    assert label_counts(y).tolist() == [counter[c] for c in range(7)]
    assert label_counts(torch.tensor([1, 1]), num_classes=4).tolist() == [0, 2, 0, 0]
    assert label_counts(torch.tensor([[0.0], [1.0], [1.0]])).tolist() == [1, 2]
    assert label_counts(torch.tensor([True, False, True])).tolist() == [1, 2]


def test_imbalance_ratio() -> None:
    assert imbalance_ratio(torch.tensor([90, 10])) == 9.0
    assert imbalance_ratio(torch.tensor([50, 50, 50])) == 1.0
    assert imbalance_ratio(torch.tensor([0, 3])) == math.inf
    assert math.isnan(imbalance_ratio(torch.tensor([0, 0])))


def test_sample_hashes_find_exact_copies_only() -> None:
    x = torch.randn(5, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    copy = x.clone()
    copy[1, 0, 0, 0] += 1e-6  # one value off: not a duplicate
    hx, hc = sample_hashes(x), sample_hashes(copy)
    assert [a == b for a, b in zip(hx, hc, strict=True)] == [True, False, True, True, True]
    assert len(set(hx)) == 5
    assert sample_hashes(x.double())[0] != hx[0]  # same values, other dtype
    assert sample_hashes(x.permute(0, 1, 3, 2))[0] == sample_hashes(x.permute(0, 1, 3, 2).contiguous())[0]


def test_shared_samples_against_sets() -> None:
    train = torch.randn(20, 6, generator=torch.Generator().manual_seed(1))
    val = torch.cat([torch.randn(8, 6, generator=torch.Generator().manual_seed(2)), train[[3, 7, 11]]])
    shared = shared_samples(sample_hashes(train), sample_hashes(val))
    assert shared == [8, 9, 10]
    train_rows = {tuple(r) for r in train.tolist()}
    assert shared == [i for i, r in enumerate(val.tolist()) if tuple(r) in train_rows]


def test_top_k_hardest_matches_sorting() -> None:
    losses = torch.rand(100, generator=torch.Generator().manual_seed(3))
    oracle = sorted(range(100), key=lambda i: -float(losses[i]))[:10]
    assert top_k_hardest(losses, 10).tolist() == oracle
    assert top_k_hardest(torch.tensor([1.0, math.nan, 0.5]), 2).tolist() == [1, 0]
    assert top_k_hardest(torch.tensor([1.0]), 5).tolist() == [0]


def test_looks_like_images() -> None:
    assert looks_like_images(torch.zeros(2, 3, 32, 32))
    assert not looks_like_images(torch.zeros(2, 8, 32, 32))
    assert not looks_like_images(torch.zeros(2, 64))


def test_bounded_loader_reads_a_small_set_whole_and_in_order() -> None:
    ds = TensorDataset(torch.arange(30.0))
    dl, n = bounded_loader(DataLoader(ds, batch_size=8, shuffle=True), 100)
    assert n == 30
    assert torch.cat([b[0] for b in dl]).tolist() == list(range(30))


def test_a_reading_loader_takes_bigger_batches_of_the_same_samples_in_the_same_order() -> None:
    ds = TensorDataset(torch.arange(1000.0))
    for batch_size, expected in ((8, 64), (32, 256), (512, 512)):
        plain, n = bounded_loader(DataLoader(ds, batch_size=batch_size), 600, seed=1)
        read, m = bounded_loader(DataLoader(ds, batch_size=batch_size), 600, seed=1, reading=True)
        sizes = [len(b[0]) for b in read]
        assert n == m == 600 and sizes[0] == min(expected, 600) and sum(sizes) == 600
        assert torch.equal(torch.cat([b[0] for b in plain]), torch.cat([b[0] for b in read]))
    # a loader whose data set yields whole batches (batch_size=None) is read as before
    unbatched, _ = bounded_loader(DataLoader(ds, batch_size=None), 5, reading=True)
    before, _ = bounded_loader(DataLoader(ds, batch_size=None), 5)
    assert [repr(b) for b in unbatched] == [repr(b) for b in before] and len(list(before)) == 5


def test_bounded_loader_subsets_a_large_set_deterministically_without_touching_the_global_rng() -> None:
    ds = TensorDataset(torch.arange(1000.0))
    torch.manual_seed(5)
    state = torch.get_rng_state()
    first, n = bounded_loader(DataLoader(ds, batch_size=64, shuffle=True), 100, seed=3)
    second, _ = bounded_loader(DataLoader(ds, batch_size=64), 100, seed=3)
    a = torch.cat([b[0] for b in first])
    assert torch.equal(torch.get_rng_state(), state)
    assert n == 100 and len(a) == 100 and len(set(a.tolist())) == 100
    assert torch.equal(a, torch.cat([b[0] for b in second]))
    assert float(a.max()) > 500  # a random subset, not the first 100


def test_bounded_loader_follows_a_custom_sampler() -> None:
    ds = TensorDataset(torch.arange(100.0))
    weights = torch.zeros(100)
    weights[:5] = 1.0  # the sampler only ever draws samples 0..4
    sampler = WeightedRandomSampler(weights, num_samples=200, replacement=True)
    dl, n = bounded_loader(DataLoader(ds, batch_size=10, sampler=sampler), 50)
    values = torch.cat([b[0] for b in dl])
    assert n == 50 and set(values.tolist()) <= {0.0, 1.0, 2.0, 3.0, 4.0}


class OwnItems(TensorDataset):
    """A ``TensorDataset`` subclass: it may make its own items, so it is read one sample at a time."""


def test_a_tensor_data_set_is_read_a_batch_at_a_time_into_the_same_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = torch.randn(300, 5), torch.randint(0, 3, (300,))

    def sampler() -> WeightedRandomSampler:
        return WeightedRandomSampler(torch.ones(300), 80, generator=torch.Generator().manual_seed(0))

    cases = [(1000, None, False), (100, None, True), (100, None, False), (50, sampler, False)]
    loaders = [bounded_loader(DataLoader(OwnItems(x, y), batch_size=16, sampler=s and s()), m, seed=2,
                              reading=reading) for m, s, reading in cases]
    per_sample = [(list(dl), n, dl.dataset) for dl, n in loaders]

    def one_sample(self: TensorDataset, index: int) -> None:
        raise AssertionError("a TensorDataset read one sample at a time")

    monkeypatch.setattr(TensorDataset, "__getitem__", one_sample)
    for (m, s, reading), (want, n, source) in zip(cases, per_sample, strict=True):
        fast, k = bounded_loader(DataLoader(TensorDataset(x, y), batch_size=16, sampler=s and s()), m, seed=2,
                                 reading=reading)
        got = list(fast)
        assert k == n and len(got) == len(want)
        for a, b in zip(got, want, strict=True):
            assert type(a) is type(b) and all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
        # positions map back to data set indices as through a Subset (DataInspector's hardest samples)
        assert isinstance(fast.dataset, Subset) and list(fast.dataset.indices) == (
            list(source.indices) if isinstance(source, Subset) else list(range(300))
        )


def test_first_and_all_dataloaders() -> None:
    a, b = DataLoader(range(3)), DataLoader(range(4))
    assert first_dataloader([a, b]) is a
    assert first_dataloader({"x": b, "y": a}) is b
    assert first_dataloader(None) is None
    assert all_dataloaders({"x": [a], "y": b}) == [a, b]


@pytest.mark.parametrize("bad", [torch.zeros(0, dtype=torch.long)])
def test_label_counts_of_nothing_is_empty(bad: torch.Tensor) -> None:
    assert label_counts(bad).tolist() == []
