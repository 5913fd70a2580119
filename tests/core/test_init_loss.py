"""The expected loss at init and the prior bias, against plain PyTorch losses and distributions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from recipe_callbacks.core.init_loss import (
    ExpectedLoss,
    TargetSummary,
    binary_entropy,
    entropy,
    expected_classification_loss,
    expected_regression_loss,
    judge_init_loss,
    predicted_distribution,
)
from recipe_callbacks.core.init_well import bias_for_prior
from recipe_callbacks.core.task import logits_of


def labels_with_prior(counts: list[int]) -> torch.Tensor:
    """Integer labels with exactly ``counts[c]`` samples of class c, shuffled."""
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(0))]


def test_entropy_matches_torch_categorical() -> None:
    prior = torch.tensor([0.5, 0.2, 0.2, 0.1])
    oracle = float(torch.distributions.Categorical(probs=prior).entropy())
    assert entropy(prior) == pytest.approx(oracle, rel=1e-6)
    assert entropy(torch.tensor([3.0, 0.0, 1.0])) == pytest.approx(
        float(torch.distributions.Categorical(probs=torch.tensor([0.75, 0.0, 0.25])).entropy()), rel=1e-6
    )
    assert entropy(torch.ones(10)) == pytest.approx(math.log(10))


@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.93, 1.0])
def test_binary_entropy_matches_torch_bernoulli(p: float) -> None:
    oracle = float(torch.distributions.Bernoulli(probs=torch.tensor(p, dtype=torch.float64)).entropy())
    assert binary_entropy(p) == pytest.approx(oracle, abs=1e-9)


def test_binary_entropy_rejects_a_probability_out_of_range() -> None:
    with pytest.raises(ValueError, match="p must be in"):
        binary_entropy(1.5)


def test_logits_of_reads_common_output_structures() -> None:
    t = torch.zeros(2, 3)
    assert logits_of(t) is t
    assert logits_of((t, torch.ones(1))) is t
    assert logits_of({"logits": t, "hidden": torch.ones(1)}) is t
    assert logits_of("text") is None


def test_predicted_distribution_is_the_mean_softmax_or_sigmoid() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [math.log(3.0), 0.0]])
    torch.testing.assert_close(predicted_distribution(logits, "multiclass"), torch.tensor([0.5, 0.5]).double())
    binary = predicted_distribution(torch.tensor([0.0, 0.0]), "binary")
    torch.testing.assert_close(binary, torch.tensor([0.5, 0.5]).double())
    assert predicted_distribution(logits, "regression") is None


def test_balanced_and_unknown_priors_expect_log_c() -> None:
    assert expected_classification_loss(10, None, 0.25).value == pytest.approx(math.log(10))
    near_balanced = torch.tensor([0.12, 0.08, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])
    e = expected_classification_loss(10, near_balanced, 0.25)
    assert e.value == pytest.approx(math.log(10))
    assert e.basis == "prior_balanced" and e.is_log_c


def test_imbalanced_prior_expects_its_entropy_which_a_prior_predicting_model_reaches() -> None:
    y = labels_with_prior([90, 10])  # 1:9 as a two-class softmax problem
    summary = TargetSummary("multiclass", 2)
    summary.update(y)
    e = expected_classification_loss(2, summary.prior(), 0.25)
    assert e.value == pytest.approx(binary_entropy(0.1))
    assert e.uninformed == pytest.approx(math.log(2))
    # oracle: logits equal to the prior bias give exactly this cross-entropy
    bias = bias_for_prior("multiclass", summary)
    assert bias is not None
    oracle = F.cross_entropy(bias.expand(len(y), 2), y)
    assert float(oracle) == pytest.approx(e.value, rel=1e-9)
    # and a default (all-zero logits) model sits at the uninformed loss log 2
    assert float(F.cross_entropy(torch.zeros(len(y), 2), y)) == pytest.approx(e.uninformed, rel=1e-6)


def test_expected_loss_against_a_prior_on_a_batch_with_another_label_mix() -> None:
    prior = torch.tensor([0.9, 0.1], dtype=torch.float64)
    y = labels_with_prior([13, 3])  # a batch with 3/16 positives
    observed = torch.bincount(y, minlength=2).double()
    e = expected_classification_loss(2, prior, 0.25, observed)
    oracle = F.cross_entropy(prior.log().expand(len(y), 2), y)
    assert e.value == pytest.approx(float(oracle), rel=1e-9)


def test_bias_for_prior_makes_the_prediction_the_prior() -> None:
    multi = TargetSummary("multiclass", 4)
    multi.update(labels_with_prior([50, 30, 15, 5]))
    bias = bias_for_prior("multiclass", multi)
    assert bias is not None
    torch.testing.assert_close(bias.softmax(0), torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64))
    binary = TargetSummary("binary")
    binary.update(labels_with_prior([90, 10]).float())
    b = bias_for_prior("binary", binary)
    assert b is not None and b.shape == (1,)
    assert float(b.sigmoid()) == pytest.approx(0.1)
    reg = TargetSummary("regression")
    reg.update(torch.tensor([[49.0, 1.0], [51.0, 3.0]]))
    torch.testing.assert_close(bias_for_prior("regression", reg), torch.tensor([50.0, 2.0], dtype=torch.float64))


def test_a_class_never_seen_gets_a_small_finite_bias() -> None:
    s = TargetSummary("multiclass", 3)
    s.update(torch.tensor([0, 0, 1]))
    bias = bias_for_prior("multiclass", s)
    assert bias is not None and torch.isfinite(bias).all()
    assert float(bias.softmax(0)[2]) < 1e-3


def test_target_summary_counts_across_batches_and_ignores_negative_labels() -> None:
    s = TargetSummary("multiclass", 3)
    s.update(torch.tensor([0, 1, -100]))
    s.update(torch.tensor([2, 2]))
    assert s.counts is not None and s.counts.tolist() == [1.0, 1.0, 2.0]
    assert s.n == 4


def test_regression_expected_loss_is_the_target_variance() -> None:
    g = torch.Generator().manual_seed(2)
    y = 50 + 3 * torch.randn(200, 1, generator=g)
    s = TargetSummary("regression")
    s.update(y[:100])
    s.update(y[100:])
    e = expected_regression_loss(s)
    assert e is not None
    assert e.value == pytest.approx(float(y.double().var(unbiased=False)), rel=1e-9)
    # oracle: predicting the mean gives the variance, predicting zero gives E[y^2]
    assert e.value == pytest.approx(float(F.mse_loss(y.double().mean().expand_as(y), y.double())), rel=1e-9)
    assert e.uninformed == pytest.approx(float(F.mse_loss(torch.zeros_like(y), y.double())), rel=1e-9)
    judged = TargetSummary("regression")
    judged.update(y[:10])
    with_judged = expected_regression_loss(s, judged)
    assert with_judged is not None
    oracle = F.mse_loss(y.double().mean().expand(10, 1), y[:10].double())
    assert with_judged.value == pytest.approx(float(oracle), rel=1e-9)


def test_judge_init_loss_places_the_observed_loss() -> None:
    uniform10 = ExpectedLoss(math.log(10), math.log(10), "")
    ok = judge_init_loss(2.35, uniform10, 0.25)
    assert ok.verdict == "pass"
    assert (ok.low, ok.high) == pytest.approx((math.log(10) / 1.25, math.log(10) * 1.25))
    assert ok.ratio == pytest.approx(2.35 / math.log(10))
    assert judge_init_loss(9.0, uniform10, 0.25).verdict == "too_high"
    assert judge_init_loss(0.5, uniform10, 0.25).verdict == "too_low"
    assert judge_init_loss(math.nan, uniform10, 0.25).verdict == "too_high"
    imbalanced = ExpectedLoss(binary_entropy(0.1), math.log(2), "")
    assert judge_init_loss(0.70, imbalanced, 0.25).verdict == "uninformed"
    assert judge_init_loss(math.log(2) * 1.5, imbalanced, 0.25).verdict == "uninformed"  # default-bias skew
    assert judge_init_loss(math.log(2) * 1.6, imbalanced, 0.25).verdict == "too_high"
    assert judge_init_loss(0.33, imbalanced, 0.25).verdict == "pass"
    assert judge_init_loss(3.0, imbalanced, 0.25).verdict == "too_high"


def test_sums_of_two_halves_added_part_by_part_equal_the_sums_of_the_whole() -> None:
    """What sum_over_ranks adds over processes: the parts of two shards, added, load the whole's figures."""
    from recipe_callbacks.core.init_loss import InitLossSums

    g = torch.Generator().manual_seed(0)
    logits, y = torch.randn(12, 3, generator=g), torch.randint(0, 3, (12,), generator=g)
    whole, first, second = InitLossSums("multiclass", 3), InitLossSums("multiclass", 3), InitLossSums("multiclass", 3)
    whole.add(logits, y)
    first.add(logits[:5], y[:5])
    second.add(logits[5:], y[5:])
    first.load([a.double() + b.double() for a, b in zip(first.parts(), second.parts(), strict=True)])
    assert first.loss == pytest.approx(float(F.cross_entropy(logits.double(), y)), rel=1e-12)
    assert first.loss == pytest.approx(whole.loss, rel=1e-12) and first.n == 12
    torch.testing.assert_close(first.mean_prob(), logits.double().softmax(1).mean(0))
    torch.testing.assert_close(first.targets.counts, torch.bincount(y, minlength=3).double())


def test_fix_bias_puts_a_bias_back_when_the_loss_gets_worse_or_the_measure_fails() -> None:
    from recipe_callbacks.core.init_well import fix_bias

    s = TargetSummary("multiclass", 2)
    s.update(labels_with_prior([90, 10]))
    layer = torch.nn.Linear(4, 2)
    old = layer.bias.detach().clone()
    assert fix_bias(layer, "multiclass", s, lambda: 0.5, lambda: 0.9).status == "reverted"
    torch.testing.assert_close(layer.bias.detach(), old)

    def broken() -> float:
        raise RuntimeError("forward failed")

    with pytest.raises(RuntimeError):
        fix_bias(layer, "multiclass", s, lambda: 0.5, broken)
    torch.testing.assert_close(layer.bias.detach(), old)
    assert fix_bias(torch.nn.Linear(4, 2, bias=False), "multiclass", s, lambda: 0.5, lambda: 0.4).status == "no_bias"
    assert fix_bias(torch.nn.Linear(4, 3), "multiclass", s, lambda: 0.5, lambda: 0.4).status == "size_mismatch"
    fixed = fix_bias(layer, "multiclass", s, lambda: 0.5, lambda: 0.4)
    assert fixed.status == "set"
    torch.testing.assert_close(layer.bias.detach().double().softmax(0), torch.tensor([0.9, 0.1], dtype=torch.float64))


def test_the_prior_comes_from_enough_data_before_the_judged_batch() -> None:
    from recipe_callbacks.core.init_loss import choose_prior

    judged = TargetSummary("multiclass", 3)
    judged.update(torch.tensor([0, 0, 1]))
    counted = TargetSummary("multiclass", 3)
    counted.update(labels_with_prior([60, 30]))  # class 2 never counted: frequency 0
    choice = choose_prior(3, None, None, lambda: counted, judged)
    assert choice.origin == "counted" and choice.counted == 90
    torch.testing.assert_close(choice.prior, torch.tensor([2 / 3, 1 / 3, 0.0], dtype=torch.float64))
    assert choose_prior(3, None, None, lambda: None, judged).origin == "first_batch"
    calls: list[int] = []
    inspector = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    assert choose_prior(3, inspector, None, lambda: calls.append(1) or None, judged).origin == "inspector"
    assert calls == []  # the training set is not read again when DataInspector counted it


def test_init_well_sets_the_final_bias_to_the_log_odds_of_the_counted_targets() -> None:
    from recipe_callbacks.core.init_well import LogitsCapture, init_well

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    with torch.no_grad():
        model[2].weight.zero_()  # the logits are the bias: the loss after is the prior's entropy
    x, y = torch.randn(40, 3), torch.tensor([1.0] * 4 + [0.0] * 36)
    batches = [(x[i : i + 10], y[i : i + 10]) for i in range(0, 40, 10)]
    capture = LogitsCapture()
    forwards: list[int] = []

    def forward(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        forwards.append(1)
        return capture.run(model, lambda: model(batch[0]).squeeze(-1)), batch[1]

    well = init_well(model, capture, batches, 2, None, None, forward=forward,
                     count=lambda task, size: TargetSummary.of(task, size, [b[1] for b in batches]),
                     prior=lambda size: None)
    assert well.problem == "" and well.task == "binary" and well.layer_name == "2"
    assert well.fix is not None and well.fix.status == "set" and len(forwards) == 4  # 2 before, 2 after
    assert float(model[2].bias.detach().sigmoid()) == pytest.approx(0.1, rel=1e-4)
    judged = torch.cat([b[1] for b in batches[:2]])
    oracle = F.binary_cross_entropy(torch.full_like(judged, 0.1), judged)  # predicting the prior
    assert well.fix.after == pytest.approx(float(oracle), rel=1e-4)
    # what stops it, as a status and the numbers a text names
    assert init_well(model, capture, [], 2, None, None, forward=forward, count=lambda t, s: None,
                     prior=lambda s: None).problem == "no_batches"
    no_targets = init_well(model, capture, batches, 2, "binary", None, forward=forward, count=lambda t, s: None,
                           prior=lambda s: None)
    assert no_targets.problem == "no_targets" and no_targets.numbers()["layer"] == "2"


def test_expected_at_init_counts_only_when_needed_and_takes_a_given_value() -> None:
    from recipe_callbacks.core.init_loss import expected_at_init

    judged = TargetSummary.of("regression", None, [torch.tensor([[1.0], [3.0]])])
    counted: list[int | None] = []

    def count(size: int | None) -> TargetSummary:
        counted.append(size)
        return TargetSummary("regression")  # no targets: no count, the judged targets' variance

    exp, choice = expected_at_init("regression", None, judged, 0.25, inspector=lambda s: None, fixed=None, count=count)
    assert exp is not None and exp.value == pytest.approx(1.0) and choice is None and counted == [None]
    balanced = TargetSummary.of("multiclass", 3, [torch.tensor([0, 1, 2])])
    exp, choice = expected_at_init("multiclass", 3, balanced, 0.25, inspector=lambda s: torch.full((s,), 1 / s),
                                   fixed=None, count=count, given=2.0)
    assert exp is not None and (exp.value, exp.basis) == (2.0, "argument") and choice is not None
    assert choice.origin == "inspector" and counted == [None]  # DataInspector's prior: the set is not read again
