"""InputIndependentBaseline: recipe step 2g, the model must learn more from its input than without it."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from typing_extensions import override

from recipe_callbacks.core.baseline_curves import (
    MEMORISED,
    PAIRING_ALPHA,
    BaselineRuns,
    BaselineVerdict,
    PairingTest,
    baseline_stop,
    baseline_verdict,
    next_horizon,
    pairing_test,
)
from recipe_callbacks.core.cost import FORWARD_PASS_STEPS
from recipe_callbacks.core.loss_curves import plateau_stop
from recipe_callbacks.core.pictures import line_chart
from recipe_callbacks.core.short_training import distinct_targets, other_pairings, take_samples
from recipe_callbacks.core.skip import CheckSkipped
from recipe_callbacks.plumbing.batch import BatchToXY, ResolvedBatch
from recipe_callbacks.plumbing.callback_base import FirstBatchCheck
from recipe_callbacks.plumbing.copy_training import RunState, ShortTrainings, require_automatic_optimization, run_cost
from recipe_callbacks.plumbing.finding import OnFail, Status
from recipe_callbacks.plumbing.validation import check_float, check_int

if TYPE_CHECKING:
    import lightning.pytorch as pl

FIRST_HORIZON = 8
"""Steps of the baseline's rounds: most models separate within the first."""

PAIRINGS = 23
"""Other pairings the pairing test compares (all, for 4 samples of 4 different targets): 1 in 24 by luck."""


class InputIndependentBaseline(FirstBatchCheck):
    """Trains the model twice from the same initial weights on the same samples, once on inputs set
    to zero (targets unchanged) and once on the real inputs, and checks that the real inputs reach
    a clearly lower loss.

    Recipe step 2g, "input-independent baseline": a model that learns as well from zeros as from
    its data is not using its input: a ``forward`` that ignores ``x``, an input that never reaches
    the network, or a data pipeline that feeds zeros or constants.

    Both runs train the user's own module in place from its weights at the start of fit on the
    first ``num_samples`` samples of the first training batch (of different targets where the first
    ones repeat a target and the batch has others, for the pairing test below; the batch
    ``training_step`` receives, so no data loader is read twice), with the user's own optimizer
    class and settings (the first optimizer, at its base learning rate, without scheduler) and loss
    (``training_step``), in train mode and under an isolated RNG seeded the same for both; the
    module is put back bit for bit after each (see ``recipe_callbacks.plumbing.copy_training``), so
    the real run, its optimizer, the logged metrics and the RNG are untouched. It does not run again on a
    run resumed from a checkpoint.

    Judged by evidence, not by a fixed step count: the zero-input run goes first and trains until
    its loss levels off (an input-free model learns the targets' average and gets no better) or a
    horizon of 8 steps. The real-input run then trains, from the same weights, until its loss
    separates from the zero-input curve: below it (at the same step, or below its lowest value
    once that levelled off) by the margin, at ``confirm`` consecutive points; the margin is
    ``min_gap`` of the zero-input loss, or three times that curve's step-to-step noise when larger.
    It stops early too when both curves are the same over the first points (the loss does not
    depend on the input), or when it levels off without separating. When the curves are still
    undecided at the horizon, both runs go on for another 8 steps, up to ``max_steps``: most
    models separate within the first 8 steps; language models, whose real run first learns the
    same token frequencies as the zero-input one, need tens of steps. A round continues each run
    where the last one stopped (its module, optimizer and random state kept off the device, as the
    start of fit is), so no step is trained twice, the curves are, bit for bit, those of
    uninterrupted runs to that horizon, and the zero-input run goes at most 8 steps beyond where
    the real run separates.

    Where the curves are still undecided after the first round, a pairing test asks the real run
    directly whether it learned from its inputs: the loss of its samples with each input and its
    own target, and with the inputs reordered among the samples (23 other pairings; the targets and
    everything else of the batch kept), before and after its training, all under one random state.
    A model that learned nothing about which input goes with which target lowers every pairing's
    loss alike, and its own pairing falls most by luck with chance 1/24; so when it falls more than
    every other (beyond round-off), the check passes there, within a 5% error. The
    curves cannot show this as early on a language model: its zero-input run learns the characters'
    frequencies faster than the real one (its input is the same at every step), so the real curve
    starts out behind and gets below it only after tens of steps. Samples with fewer distinct
    pairings (fewer than 4 samples, equal targets) go on with the rounds.

    ``pass`` when the curves separated or the pairing test passed; ``fail`` when they are the same,
    or the real run ended without separating; ``warn`` when a loss is not finite or the real run's
    loss did not decrease at all (then the comparison says nothing; ``OverfitOneBatch`` tells why
    the model does not learn). A batch whose only target is the input itself (labels taken from
    ``input_ids`` inside ``training_step``) is a ``skip``: zeroing the input would zero the target.

    Cost (``values["cost_steps"]``): measured, the wall time of the whole check (both runs, every
    step once, the pairing test's 48 forward passes when taken, the figure and the report) over the
    median training step of the same run (``values["cost_seconds"]`` is the wall time); a count of
    the passes taken (a step on ``num_samples`` of a ``B``-sample batch counting ``num_samples / B``,
    a forward-only pass a third of that) when the run has too few steps to time.

    Args:
        max_steps: the most optimizer steps for each run.
        num_samples: how many samples of the first training batch to train on (all if smaller).
        min_gap: the smallest separation that counts, as a share of the zero-input loss, in (0, 1].
        confirm: how many consecutive points must show the separation.
        lr: learning rate for the runs; default the user's base rate. Also used (with Adam) when
            the user's optimizer cannot be rebuilt.
        on_fail: ``"warn"``, ``"raise"`` or ``"ignore"`` (see ``RecipeCallback``).
        input_key: where the input is in a batch (a dict key or a position such as ``"0"``).
        target_key: where the target is in a batch.
        batch_to_xy: a function ``batch -> (x, y)``; the check cannot rebuild such a batch with a
            zero input and skips (give ``input_key`` instead).

    Raises:
        ValueError: an argument out of range (the message names it).
        TypeError: an argument of the wrong type.

    Logged:
        - ``recipe.input_independent_baseline/loss_curves``: figure of both runs' loss per step.
        - ``recipe.input_independent_baseline/finding``: text, the Finding with its values
          ``real_loss``, ``zero_loss`` (final losses on real and zeroed inputs),
          ``real_initial_loss``, ``zero_initial_loss`` (their losses before training),
          ``zero_best_loss`` (the lowest zero-input loss), ``gap``, ``margin``, ``noise`` (how far
          the real curve ended below its zero-input reference, the gap that counts, the zero curve's
          noise), ``identical``, ``separated`` (1 when the curves are the same at every point, when
          they separated), ``paired`` (1 when the pairing test passed), ``pairings`` (the other
          pairings it compared, 0 when not taken), ``pairing_gap`` (how much more the own pairing's
          loss fell than the best other one's), ``steps``, ``zero_steps``, ``cost_steps``,
          ``num_samples``.

    Example::

        trainer = Trainer(callbacks=[InputIndependentBaseline(), RecipeReport()])
    """

    sharded_reason: ClassVar[str] = (
        "it trains copies of the model, and a copy of a sharded model is the whole model gathered on every rank"
    )

    one_off = True

    def __init__(
        self,
        max_steps: int = 60,
        num_samples: int = 4,
        min_gap: float = 0.01,
        confirm: int = 3,
        lr: float | None = None,
        on_fail: OnFail = "warn",
        input_key: str | None = None,
        target_key: str | None = None,
        batch_to_xy: BatchToXY | None = None,
    ) -> None:
        super().__init__(on_fail, input_key, target_key, batch_to_xy)
        owner = type(self).__name__
        self.max_steps = check_int(owner, "max_steps", max_steps)
        self.num_samples = check_int(owner, "num_samples", num_samples)
        self.min_gap = check_float(owner, "min_gap", min_gap, maximum=1.0)
        self.confirm = check_int(owner, "confirm", confirm)
        self.lr = None if lr is None else check_float(owner, "lr", lr)

    @override
    def check_first_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        require_automatic_optimization(pl_module)
        resolved = self.resolve(trainer, batch)
        if resolved is None:
            return
        if resolved.with_input is None:
            raise CheckSkipped(
                "the batch comes through batch_to_xy, so it cannot be rebuilt with a zero input", "input_key"
            )
        if resolved.y is None or resolved.y is resolved.x:
            raise CheckSkipped(
                "the batch has no target apart from the input (a language model that takes its labels from "
                "input_ids inside training_step): zeroing the input would zero the target too; give batches a "
                "separate labels entry",
                "target_key",
            )
        with self.stopwatch() as watch:  # the whole check: both runs, the figure and the report
            size = int(resolved.x.shape[0]) if resolved.x.ndim else 1
            n = min(self.num_samples, size)
            runs = trainer.strategy.broadcast(self._train(trainer, pl_module, batch, resolved, n, size), src=0)
            if runs.skipped is not None:
                raise runs.skipped
            self._judge(trainer, runs, n, n / size)
        self.state_cost(watch.seconds)

    def _train(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        resolved: ResolvedBatch,
        n: int,
        size: int,
    ) -> BaselineRuns:
        """Train both runs, in rounds of growing horizon (see the class docstring); plain data, the
        same on every rank after the broadcast (a skip travels in it too)."""
        assert resolved.with_input is not None
        chosen = distinct_targets(resolved.y, n) if resolved.y is not None else None
        real_batch = take_samples(batch, n, size, chosen)
        zero_batch = take_samples(resolved.with_input(torch.zeros_like(resolved.x)), n, size, chosen)
        x = take_samples(resolved.x, n, size, chosen)
        constant = float(x.reshape(-1)[0]) if x.numel() > 0 and bool(torch.all(x == x.reshape(-1)[0])) else None
        spent = 0.0
        try:
            with ShortTrainings(trainer, pl_module, self.lr) as trainings:
                seed, horizon = torch.initial_seed(), min(FIRST_HORIZON, self.max_steps)
                zero_state = real_state = None  # a later round continues both runs where they stopped
                pairing: PairingTest | None = None
                first = True  # the pairing test looks once, after the first round (one look keeps its error bound)
                while True:
                    more = horizon < self.max_steps
                    zero = trainings.run(
                        [zero_batch], horizon, seed=seed, stop=plateau_stop, keep=more, resume=zero_state
                    )
                    zero_run, zero_state = zero.run, zero.state
                    levelled = zero_run.stop_reason == "levelled off"
                    rule = baseline_stop(zero_run.losses, levelled, self.min_gap, self.confirm)
                    real = trainings.run(
                        [real_batch], self.max_steps if levelled else horizon, seed=seed, stop=rule,
                        keep=more and not levelled, resume=real_state,
                    )
                    real_run, real_state = real.run, real.state
                    spent += run_cost(zero_run) + run_cost(real_run)
                    v = baseline_verdict(
                        real_run.losses, zero_run.losses, self.min_gap, zero_levelled=levelled, confirm=self.confirm
                    )
                    decided = v.identical or v.separated or levelled or not math.isfinite(v.real_final + v.zero_final)
                    if not decided and first and real_state is not None and v.real_learned:
                        pairing, cost = self._pairing(trainings, real_batch, seed, real_state)
                        spent += cost
                        decided = pairing is not None and pairing.learned
                    if decided or horizon >= self.max_steps:
                        break
                    first = False
                    horizon = next_horizon(horizon, self.max_steps, FIRST_HORIZON)
        except CheckSkipped as skip:
            return BaselineRuns([], [], 0, 0, False, 0.0, constant, skipped=skip)
        return BaselineRuns(
            real_run.losses, zero_run.losses, real_run.steps, zero_run.steps, levelled, spent, constant, pairing
        )

    def _pairing(
        self, trainings: ShortTrainings, batch: Any, seed: int, at: RunState
    ) -> tuple[PairingTest | None, float]:
        """The pairing test on the real run as a kept state left it (see ``pairing_test``) and its
        cost in steps; ``None`` when the samples have too few distinct pairings to decide (fewer
        than 4 samples, equal targets) or the batch cannot be rebuilt with its inputs reordered."""
        cut = self.resolved(batch)
        x, y = cut.x, cut.y
        if cut.with_input is None or y is None or x.ndim == 0 or y.ndim == 0 or y.shape[0] != x.shape[0]:
            return None, 0.0
        orders = other_pairings(y, PAIRINGS)
        if (len(orders) + 1) * PAIRING_ALPHA < 1:
            return None, 0.0
        batches = [batch, *(cut.with_input(x[torch.tensor(order, device=x.device)]) for order in orders)]
        before = trainings.evaluate(batches, seed=seed)
        after = trainings.evaluate(batches, seed=seed, at=at)
        return pairing_test(before, after), 2 * len(batches) * FORWARD_PASS_STEPS

    def _judge(self, trainer: pl.Trainer, runs: BaselineRuns, n: int, scale: float) -> None:
        v = baseline_verdict(runs.real, runs.zero, self.min_gap, zero_levelled=runs.zero_levelled, confirm=self.confirm)
        values = {
            "real_loss": v.real_final,
            "zero_loss": v.zero_final,
            "real_initial_loss": v.real_initial,
            "zero_initial_loss": v.zero_initial,
            "zero_best_loss": v.zero_best,
            "gap": v.gap,
            "margin": v.margin,
            "noise": v.noise,
            "steps": float(runs.steps),
            "zero_steps": float(runs.zero_steps),
            "cost_steps": runs.spent * scale,
            "num_samples": float(n),
            "identical": float(v.identical),
            "separated": float(v.separated),
            "paired": float(runs.pairing is not None and runs.pairing.learned),
            "pairings": float(runs.pairing.pairings) if runs.pairing is not None else 0.0,
            "pairing_gap": runs.pairing.gap if runs.pairing is not None else math.nan,
        }
        self.log_figure(
            trainer, "loss_curves", line_chart, {"real inputs": runs.real, "zero inputs": runs.zero},
            title="InputIndependentBaseline: the loss on real inputs must end clearly below the loss on zeros",
            xlabel="training step", ylabel="training loss", styles={"zero inputs": "--"},
        )
        status, summary, advice = self._verdict_text(v, runs, n)
        self.report(trainer, status, summary, values, advice)

    def _verdict_text(self, v: BaselineVerdict, runs: BaselineRuns, n: int) -> tuple[Status, str, str]:
        """The status, summary and advice of the Finding (the prose of this check, in one place)."""
        real, zero = runs.real, runs.zero
        detail = f"(zero inputs {runs.zero_steps} steps, real inputs {runs.steps} steps on {n} samples)"
        curves = (
            f"real inputs: loss {v.real_initial:.3g} -> {v.real_final:.3g}, zeroed inputs: "
            f"{v.zero_initial:.3g} -> {v.zero_final:.3g} (lowest {v.zero_best:.3g}) {detail}"
        )
        if v.identical:
            summary = (
                f"the loss is the same with zeroed inputs as with the real inputs at all {len(real)} points "
                f"of the curve ({v.real_initial:.3g} -> {v.real_final:.3g}, {n} samples): the loss does not depend "
                "on the input"
            )
            return "fail", summary, self._advice(runs)
        if v.status == "pass":
            summary = f"{curves}; the real inputs ended {v.gap:.3g} below the zero-input loss (margin {v.margin:.3g})"
            return "pass", summary, ""
        if runs.pairing is not None and runs.pairing.learned and v.status != "warn":
            return "pass", f"{curves}; the curves were not apart yet, but {runs.pairing.describe()}", ""
        if not all(math.isfinite(x) for x in (*real, *zero)):
            which = "real" if not all(math.isfinite(x) for x in real) else "zeroed"
            summary = f"the loss with {which} inputs became non-finite: {curves}; the runs cannot be compared"
            advice = (
                "a model that divides by or takes the log of its input cannot take zeros; give "
                "InputIndependentBaseline(lr=...) a smaller learning rate if the real run diverged"
            )
            return "warn", summary, advice
        if v.status == "warn":
            summary = (
                f"the real run's loss did not decrease ({v.real_initial:.3g} -> {v.real_final:.3g}, "
                f"{runs.steps} steps on {n} samples), so the baseline says nothing about the input"
            )
            advice = (
                f"raise max_steps (now {self.max_steps}) or lr; OverfitOneBatch finds why a model does not learn "
                "(frozen parameters, a learning rate of zero, a wrong loss)"
            )
            return "warn", summary, advice
        if v.status == "skip" and v.memorised and not v.separated:
            summary = (
                f"{curves}; both runs memorised their {n} samples (each ended below {MEMORISED:.0%} of its first "
                "loss), which a model can do from zeroed inputs by position and bias alone: undecided"
            )
            return "skip", summary, f"raise InputIndependentBaseline(num_samples=...) (now {n}) to decide"
        if v.status == "skip":
            summary = (
                f"{curves}; the real inputs were pulling away from the zero-input loss ({v.gap:.3g} below it at the "
                f"end, less than the margin {v.margin:.3g}) when the runs reached max_steps: undecided"
            )
            return "skip", summary, f"raise InputIndependentBaseline(max_steps=...) (now {self.max_steps}) to decide"
        summary = (
            f"{curves}; the real inputs did not get clearly below the zero-input loss (ended {v.gap:.3g} "
            f"below it, margin {v.margin:.3g}): the model is not using its input"
        )
        return "fail", summary, self._advice(runs)

    def _advice(self, runs: BaselineRuns) -> str:
        if runs.constant is not None:
            return (
                f"every input value of the first batch is {runs.constant:g}: the data pipeline feeds a "
                "constant; look at what the loader yields (InputVisualizer shows it)"
            )
        where = (
            f"input_key={self.input_key!r}" if self.input_key else "the input found by default; set input_key if wrong"
        )
        return (
            f"check that forward uses x (not a constant, a cached tensor or a buffer), that the input "
            f"reaches the network ({where}), and that the data pipeline does not feed zeros or constants"
        )
