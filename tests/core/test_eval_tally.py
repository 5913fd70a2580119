"""FullEvalSet's tally and coverage gaps, against plain PyTorch and torch.utils.data samplers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler, TensorDataset

from recipe_callbacks.core.eval_tally import SLOTS, Tally, coverage_gaps, read_parts


def test_tallies_of_two_shards_added_equal_the_mean_over_every_sample() -> None:
    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(10, 4, generator=g), torch.randint(0, 4, (10,), generator=g)
    first, second = Tally.empty(), Tally.empty()
    first.add(logits[:6], y[:6], "multiclass", "cross_entropy", ["accuracy"])
    second.add(logits[6:], y[6:], "multiclass", "cross_entropy", ["accuracy"])
    head, estimates = read_parts(first.parts() + second.parts(), 0.95)
    assert estimates["loss"].count == 10
    assert estimates["loss"].mean == pytest.approx(float(F.cross_entropy(logits.double(), y)), rel=1e-12)
    assert estimates["accuracy"].mean == pytest.approx(float((logits.argmax(1) == y).double().mean()))
    assert head[0] == 2 and len(SLOTS) == len(estimates)


def test_padding_rows_of_a_shard_are_left_out() -> None:
    tally = Tally.empty(real_positions=3)
    tally.add(torch.zeros(4, 1), torch.tensor([1.0, 0.0, 1.0, 1.0]), "binary", "bce_with_logits", [])
    assert tally.excluded == 1 and float(tally.sums[0, 0]) == 3


def test_coverage_gaps_name_a_limit_drop_last_and_a_sampler_with_replacement() -> None:
    data = TensorDataset(torch.zeros(10, 1))
    assert coverage_gaps(DataLoader(data, batch_size=4), SequentialSampler(data), planned=3, limit=1.0,
                         world_size=1, count=10, excluded=0) == []
    limited = coverage_gaps(DataLoader(data, batch_size=4), None, planned=2, limit=0.5, world_size=1, count=8,
                            excluded=0)
    assert [g.kind for g in limited] == ["limit"] and limited[0].numbers["batches"] == 3
    dropped = coverage_gaps(DataLoader(data, batch_size=4, drop_last=True), None, planned=2, limit=1.0,
                            world_size=1, count=8, excluded=0)
    assert [(g.kind, g.numbers) for g in dropped] == [("drop_last", {"dropped": 2})]
    sampler = RandomSampler(data, replacement=True)
    drawn = coverage_gaps(DataLoader(data, batch_size=5, sampler=sampler), sampler, planned=2, limit=1.0,
                          world_size=1, count=10, excluded=0)
    assert [g.kind for g in drawn] == ["random_sampler"]


def test_an_evaluation_epoch_keeps_the_output_of_the_call_on_the_batch_input_and_reads_it_back() -> None:
    from recipe_callbacks.core.eval_tally import EvalEpoch, read_evaluation

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 4)
    x, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 0, 1])
    epoch = EvalEpoch("val", model)
    epoch.arm(None, None, x, y)
    with torch.no_grad():
        model(torch.randn(6, 3))  # another call (another callback's): not the batch's
        expected = model(x)
        model(x)  # a second call on the input: the first is kept
    assert epoch.capture.output is not None and torch.equal(epoch.capture.output, expected)
    tally = epoch.tally(0, lambda: [DataLoader(TensorDataset(x, y), batch_size=6)], torch.device("cpu"))
    epoch.add(tally, epoch.capture.output, [], lambda p, t: "multiclass", None, ["accuracy"], None, None)
    epoch.close()
    model(x)  # after close the hook is gone
    reading = read_evaluation(tally.parts(), tally, 0.95, 1, "multiclass", ["accuracy"], None)
    assert not reading.skipped and reading.samples == 6 and not reading.per_position
    assert reading.loss.mean == pytest.approx(float(F.cross_entropy(expected.double(), y)), rel=1e-9)
    values = reading.values()
    assert values["accuracy"] == pytest.approx(float((expected.argmax(1) == y).double().mean()))
    assert {"loss_stderr", "loss_halfwidth", "accuracy_stderr", "num_samples"} <= values.keys()
    epoch = EvalEpoch("val", model)
    epoch.skip(1, "the batch has no target", "target_key")
    skipped = epoch.tallies[1]
    assert epoch.skipping(1) and read_evaluation(skipped.parts(), skipped, 0.95, 1, None, None, None).skipped
    epoch.close()
