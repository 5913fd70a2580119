"""LeakageCheck (recipe step 1, become one with the data): near-duplicates between training and
validation, and validation figures too good to be true."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from torch.utils.data import DataLoader
from typing_extensions import override

from recipe_callbacks.core.cost import FORWARD_PASS_STEPS
from recipe_callbacks.core.data_stats import bounded_loader, first_dataloader
from recipe_callbacks.core.eval_stats import per_sample_metric
from recipe_callbacks.core.leakage import (
    Batches,
    InputKind,
    NearCount,
    Nearest,
    Tally,
    count_near,
    find_near,
    input_kind,
    nothing_too_good,
    pair_pictures,
    tally_in_turn,
    too_good,
)
from recipe_callbacks.core.pictures import image_grid
from recipe_callbacks.core.skip import CheckSkipped
from recipe_callbacks.core.task import TASKS, Task, aligned, infer_task, logits_of, per_sample_loss
from recipe_callbacks.plumbing.batch import BatchToXY, ForwardFn, ResolvedBatch, integer_inputs
from recipe_callbacks.plumbing.callback_base import RecipeCallback
from recipe_callbacks.plumbing.finding import OnFail, Status
from recipe_callbacks.plumbing.loaders import read_inputs, val_dataloaders
from recipe_callbacks.plumbing.observe import observing
from recipe_callbacks.plumbing.validation import check_choice, check_float, check_int

if TYPE_CHECKING:
    import lightning.pytorch as pl

_KEY_NEAR, _KEY_TOO_GOOD = "near_duplicates", "too_good"
_MAX_PAIRS = 8
MAX_EVALUATIONS = 5  # the too-good-to-be-true evaluation runs at the first this many validations


class LeakageCheck(RecipeCallback):
    """Leakage beyond exact copies and the "too good to be true" red flags (recipe step 1).

    At the start of training it searches, for every validation sample (at most ``max_samples``),
    the nearest of at most ``max_samples`` training samples by a cheap signature of the input:
    a grey ``thumbnail_size`` x ``thumbnail_size`` thumbnail standardised per sample for images (a
    re-encoded, brightened or slightly noised copy still matches), the features standardised by
    the training columns for tabular inputs, and the positional agreement of tokens for integer
    sequences (the same token at the same position; overlapping windows of one text are shifted,
    so they are not near-duplicates). It warns when more than ``max_fraction`` of the validation
    samples have a near-duplicate in training (exact copies are ``DataInspector``'s).

    At the first validations of a fit (up to five) it evaluates the model in eval mode, with the
    same plain task loss, on up to ``eval_samples`` training and validation samples (a batch of each
    in turn) and warns when the validation loss is far below the training loss (below
    ``max_val_train_ratio`` times it, intervals apart: with dropout and augmentation both evaluated
    in eval mode, only a data difference explains it), or when the validation accuracy is near 1.0
    in the first epoch (the lower end of its 95% interval at least ``max_first_epoch_accuracy``): a
    label hidden in the input, validation copied from training, or a task far easier than it should
    be. It stops early, from 32 samples of each set on, once wider (99.9%) intervals rule both flags
    out (``core.leakage.nothing_too_good``), as a healthy model's do after a few batches.

    Args:
        max_samples: samples of each set for the near-duplicate search (a seeded subset; global RNG untouched).
        tolerance: largest root-mean-square difference of two continuous signatures (in units of a
            standard deviation) that counts as a near-duplicate.
        token_agreement: smallest fraction of positions with the same token that makes two token
            sequences near-duplicates.
        max_fraction: largest fraction of validation samples with a near-duplicate that passes.
        eval_samples: samples of each set evaluated for the too-good-to-be-true flags.
        max_val_train_ratio: a validation loss below this fraction of the training loss is a flag.
        max_first_epoch_accuracy: a first-epoch validation accuracy whose 95% interval starts above this.
        thumbnail_size: side of the image thumbnails.
        task: ``"multiclass"``, ``"binary"`` or ``"regression"``; inferred when ``None``.
        seed: seed of the subsets drawn from large sets.
        on_fail: as for every check (:class:`~recipe_callbacks.RecipeCallback`); it only ever warns.
        input_key: as for every check.
        target_key: as for every check.
        batch_to_xy: as for every check.
        forward_fn: as for every check; it runs the model for the too-good-to-be-true evaluation.

    Raises:
        ValueError: a count below 1, a tolerance or fraction out of range, an unknown task or on_fail.
        TypeError: a count that is not an int.

    Logged:
        - ``recipe.leakage_check/near_duplicates``: text, the count and a table of the nearest pairs.
        - ``recipe.leakage_check/near_duplicate_pairs``: image, validation sample beside its nearest
          training sample (image inputs with near-duplicates only).
        - ``recipe.leakage_check/train_loss_eval``, ``.../val_loss_eval``, ``.../val_train_ratio``:
          scalars at each validation (eval mode, the plain task loss).
        - the Findings ``near_duplicates`` (``near_duplicates``, ``near_fraction``, ``min_distance``,
          ``checked_train``, ``checked_val``) and ``too_good`` (``train_loss``, ``val_loss``,
          ``val_train_ratio``, ``train_samples``, ``val_samples``, ``val_accuracy``,
          ``val_accuracy_low``), in the report.

    Cost:
        At the start: reading at most ``max_samples`` samples of each set and a nearest-neighbour
        search (about 0.5 s for 2,000 x 2,000 thumbnails or sequences of 128 tokens on one CPU
        thread). At each of the first five validations: no-grad forward passes over at most
        ``2 * eval_samples`` samples, usually 2 x 32 (it stops early, see above). Both are timed,
        stated in ``values["cost_steps"]`` of their Finding (the evaluations' total so far).

    Example::

        Trainer(callbacks=[LeakageCheck(), RecipeReport()])
    """

    one_off = True

    def __init__(
        self,
        max_samples: int = 2000,
        tolerance: float = 0.07,
        token_agreement: float = 0.9,
        max_fraction: float = 0.02,
        eval_samples: int = 256,
        max_val_train_ratio: float = 0.5,
        max_first_epoch_accuracy: float = 0.98,
        thumbnail_size: int = 8,
        task: Task | None = None,
        seed: int = 0,
        on_fail: OnFail = "warn",
        input_key: str | None = None,
        target_key: str | None = None,
        batch_to_xy: BatchToXY | None = None,
        forward_fn: ForwardFn | str | None = None,
    ) -> None:
        super().__init__(on_fail, input_key, target_key, batch_to_xy, forward_fn)
        owner = "LeakageCheck"
        self.max_samples = check_int(owner, "max_samples", max_samples)
        self.tolerance = check_float(owner, "tolerance", tolerance, inclusive_minimum=True)
        self.token_agreement = check_float(owner, "token_agreement", token_agreement, maximum=1.0)
        self.max_fraction = check_float(owner, "max_fraction", max_fraction, maximum=1.0, inclusive_minimum=True)
        self.eval_samples = check_int(owner, "eval_samples", eval_samples)
        self.max_val_train_ratio = check_float(owner, "max_val_train_ratio", max_val_train_ratio, maximum=1.0)
        self.max_first_epoch_accuracy = check_float(
            owner, "max_first_epoch_accuracy", max_first_epoch_accuracy, maximum=1.0
        )
        self.thumbnail_size = check_int(owner, "thumbnail_size", thumbnail_size)
        self.task: Task | None = None if task is None else check_choice(owner, "task", task, TASKS)
        self.seed = check_int(owner, "seed", seed, minimum=0)
        self._reset()

    def _reset(self) -> None:  # forget the evaluations of an earlier fit
        self._flagged, self._cost, self._evaluations, self._evaluation_watch = False, 0.0, 0, self.stopwatch()

    # ----------------------------------------------------------------- hooks
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._reset()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        try:
            if not self.is_resumed(trainer):
                with self.stopwatch() as watch, self.skipping(trainer):
                    self._near_duplicates(trainer)
                self.state_cost(watch.seconds, key=_KEY_NEAR)
        finally:
            self.finish_early()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or trainer.global_step == 0 or self.is_resumed(trainer):
            return
        self._evaluations += 1
        if self._evaluations <= MAX_EVALUATIONS:  # leakage shows from the first validations on
            with self._evaluation_watch, self.skipping(trainer):
                self._too_good(trainer, pl_module)
            self.state_cost(self._evaluation_watch.seconds, key=_KEY_TOO_GOOD)  # all its evaluations so far

    # ----------------------------------------------------------------- near-duplicates
    def _near_duplicates(self, trainer: pl.Trainer) -> None:
        train_loader = first_dataloader(trainer.train_dataloader)
        val_loaders = val_dataloaders(trainer)
        if train_loader is None or not val_loaders:
            raise CheckSkipped("no training and validation data to compare", key=_KEY_NEAR)
        def resolve(batch: Any) -> ResolvedBatch | None:
            return self.resolve(trainer, batch, key=_KEY_NEAR)

        train_x = read_inputs(train_loader, self.max_samples, self.seed, resolve)
        val_x: list[torch.Tensor] = []
        for loader in val_loaders:
            got = read_inputs(loader, self.max_samples, self.seed, resolve)
            if got is None:
                return
            val_x += got
        if not train_x or not val_x:
            if train_x is not None:
                raise CheckSkipped("read no samples to compare", "batch_to_xy", key=_KEY_NEAR)
            return
        kind = input_kind(train_x[0])
        if any(input_kind(x) != kind for x in train_x + val_x):
            raise CheckSkipped("training and validation inputs are of different kinds", "batch_to_xy", key=_KEY_NEAR)
        try:
            nearest, limit, n_train = find_near(
                kind, train_x, val_x, thumbnail=self.thumbnail_size, limit=self.max_samples,
                tolerance=self.tolerance, token_agreement=self.token_agreement,
            )
        except RuntimeError as err:  # inputs of varying shapes
            raise CheckSkipped(f"could not compare the inputs: {err}", "batch_to_xy", key=_KEY_NEAR) from err
        found = count_near(nearest, limit, _MAX_PAIRS)
        self._report_near(trainer, kind, nearest, found, n_train)
        pairs = pair_pictures(torch.cat(val_x), torch.cat(train_x), found.positions, nearest) if (
            kind == "image" and found.positions) else None
        if pairs is not None:  # the near-duplicate pairs side by side: validation sample, nearest training sample
            self.log_figure(trainer, "near_duplicate_pairs", image_grid, pairs[0], ncols=2, captions=pairs[1])

    def _report_near(
        self, trainer: pl.Trainer, kind: InputKind, nearest: Nearest, found: NearCount, n_train: int
    ) -> None:
        count, same, n_val = found.count, found.identical, found.checked
        fraction, positions = found.fraction, found.positions
        values = {"near_duplicates": float(count), "near_fraction": fraction, "identical_signatures": float(same),
                  "min_distance": float(nearest.distance.min()) if n_val else math.nan,
                  "checked_train": float(n_train), "checked_val": float(n_val), "cost_steps": 0.0}
        what = {
            "image": f"grey {self.thumbnail_size}x{self.thumbnail_size} thumbnails within an RMS difference of "
            f"{self.tolerance:g} standard deviations",
            "features": f"standardised features within an RMS difference of {self.tolerance:g} standard deviations",
            "tokens": f"the same token at {self.token_agreement:.0%} or more of the positions",
        }[kind]
        head = (
            f"{count} of {n_val} validation samples have a near-duplicate among {n_train} training samples "
            f"({what}; {same} identical at that level)"
        )
        rows = "".join(f"| {p} | {int(nearest.index[p])} | {float(nearest.distance[p]):.3g} |\n" for p in positions)
        table = f"\n\n| val | nearest train | distance |\n|---|---|---|\n{rows}" if positions else ""
        self.log_text(trainer, "near_duplicates", head + table)
        status: Status = "warn" if fraction > self.max_fraction else "pass"
        summary, advice = head, ""
        if status == "warn":
            pairs = ", ".join(f"val {p} ~ train {int(nearest.index[p])}" for p in positions)
            summary = (f"{head}: {fraction:.1%} of validation, above max_fraction={self.max_fraction:g} (e.g. "
                       f"{pairs}). The validation figure partly measures memory of these samples, not generalisation.")
            advice = ("Look at these pairs; deduplicate near copies (augmented or re-encoded versions, frames of one "
                      "video, records of one patient) before splitting, or split by group. If they are distinct, "
                      "raise LeakageCheck(tolerance=...) or max_fraction.")
        self.report(trainer, status, summary, values, advice, key=_KEY_NEAR, log_values=False)

    # ----------------------------------------------------------------- too good to be true
    def _batches(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loader: DataLoader[Any], tasks: list[Task]
    ) -> Batches:
        """Per batch of at most ``eval_samples`` samples: per-sample losses and accuracy hits (``None``
        after a skip of the batch's resolution); the task goes to ``tasks``. Raises ``CheckSkipped``."""
        task: Task | None = self.task
        for host_batch in bounded_loader(loader, self.eval_samples, self.seed)[0]:
            batch = move_data_to_device(host_batch, pl_module.device)
            resolved = self.resolve(trainer, batch, key=_KEY_TOO_GOOD)
            if resolved is None:
                yield None
                return
            if resolved.y is None:
                raise _not_evaluated("target_key")
            try:
                output = logits_of(self.run_model(pl_module, batch, resolved))
            except Exception as err:  # a forward that wants more than the input
                raise _not_evaluated("forward_fn") from err
            # paired as the model's own loss pairs them (causal-LM shift, flattened logits)
            pair = aligned(output, resolved.y, integer_inputs(batch, resolved)) if output is not None else None
            logits, y = pair if pair is not None else (None, resolved.y)
            task = task or (infer_task(logits, y) if logits is not None else None)
            if logits is None or task is None:
                raise _not_evaluated("task")
            try:
                losses = per_sample_loss(logits, y, task)
            except (RuntimeError, ValueError) as err:
                raise _not_evaluated("task") from err
            self._cost += FORWARD_PASS_STEPS
            tasks.append(task)
            yield losses, per_sample_metric("accuracy", task, logits, y)

    def _evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loaders: tuple[DataLoader[Any], DataLoader[Any]]
    ) -> tuple[list[Tally], Task] | None:
        """Training and validation tallies, a batch of each in turn, each up to ``eval_samples``
        samples, until they rule both flags out (``nothing_too_good``); ``None`` after a skip."""
        first_epoch = trainer.current_epoch == 0
        tasks: list[Task] = []

        def enough(tallies: list[Tally]) -> bool:
            return all(t.count for t in tallies) and nothing_too_good(
                tallies[0].estimates()[0], *tallies[1].estimates(), self.max_val_train_ratio,
                self.max_first_epoch_accuracy, first_epoch,
            )

        with observing(pl_module):
            streams = [self._batches(trainer, pl_module, loader, tasks) for loader in loaders]
            tallies = tally_in_turn(streams, self.eval_samples, enough)
        if tallies is None:
            return None
        if not tasks or not all(t.count for t in tallies):
            raise _not_evaluated("")
        return tallies, tasks[0]

    def _too_good(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        train_loader = first_dataloader(trainer.train_dataloader)
        val_loader = first_dataloader(trainer.val_dataloaders)
        if train_loader is None or val_loader is None:
            raise CheckSkipped("no training or validation data to evaluate", key=_KEY_TOO_GOOD)
        evaluated = self._evaluate(trainer, pl_module, (train_loader, val_loader))
        if evaluated is None:
            return
        (train, val), task = evaluated
        (t_loss, _), (v_loss, v_acc) = train.estimates(), val.estimates()
        flags = too_good(t_loss, v_loss, v_acc, self.max_val_train_ratio, self.max_first_epoch_accuracy,
                         trainer.current_epoch == 0)
        values = {"train_loss": t_loss.mean, "val_loss": v_loss.mean, "val_train_ratio": flags.ratio,
                  "train_samples": train.count, "val_samples": val.count, "step": float(trainer.global_step),
                  "cost_steps": self._cost}
        parts = [
            f"at step {trainer.global_step} (epoch {trainer.current_epoch}), in eval mode with the plain {task} "
            f"loss: training samples {t_loss.text()}, validation samples {v_loss.text()} (ratio {flags.ratio:.2g})"
        ]
        if v_acc is not None and flags.accuracy_low is not None:
            values["val_accuracy"], values["val_accuracy_low"] = v_acc.mean, flags.accuracy_low
            parts.append(f"validation accuracy {v_acc.mean:.3f} (95% interval from {flags.accuracy_low:.3f})")
        summary = "; ".join(parts)
        self.log_scalars(
            trainer, {"train_loss_eval": t_loss.mean, "val_loss_eval": v_loss.mean, "val_train_ratio": flags.ratio}
        )
        seen = []
        if flags.far_below:
            seen.append(
                f"the validation loss is far below the training loss (below {self.max_val_train_ratio:g}x, intervals "
                "apart), with the same model, mode and loss: validation is easier than training"
            )
        if flags.too_accurate:
            seen.append(
                f"the validation accuracy is near 1.0 in the first epoch (interval above "
                f"{self.max_first_epoch_accuracy:g})"
            )
        if seen:
            self._flagged = True
            advice = ("Look for leakage: a label (or an ID that encodes it) in the inputs, validation samples copied "
                      "from training, a validation set from an easier distribution, or training labels that are "
                      "noisier than validation's. If the task is this easy, raise max_first_epoch_accuracy.")
            summary = f"too good to be true: {' and '.join(seen)}. {summary}."
            self.report(trainer, "warn", summary, values, advice, key=_KEY_TOO_GOOD, log_values=False)
        elif not self._flagged:
            self.report(
                trainer, "pass", f"{summary}: nothing too good to be true", values, key=_KEY_TOO_GOOD, log_values=False
            )


def _not_evaluated(argument: str) -> CheckSkipped:
    """The skip of the too-good-to-be-true evaluation, naming the argument that would let it run."""
    return CheckSkipped("could not evaluate the model's loss on training and validation samples", argument,
                        key=_KEY_TOO_GOOD)
