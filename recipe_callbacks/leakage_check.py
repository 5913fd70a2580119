"""LeakageCheck (recipe step 1, become one with the data): near-duplicates between training and
validation, and validation figures too good to be true."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities.seed import isolate_rng
from torch.utils.data import DataLoader
from typing_extensions import override

from recipe_callbacks.core.cost import FORWARD_PASS_STEPS
from recipe_callbacks.core.data_stats import all_dataloaders, bounded_loader, first_dataloader
from recipe_callbacks.core.eval_stats import MeanEstimate, estimate, per_sample_metric
from recipe_callbacks.core.leakage import (
    InputKind,
    Nearest,
    feature_signatures,
    image_signatures,
    input_kind,
    nearest_continuous,
    nearest_tokens,
    standardize_columns,
    wilson_lower,
)
from recipe_callbacks.core.pictures import image_grid
from recipe_callbacks.core.task import TASKS, Task, infer_task, logits_of, per_sample_loss
from recipe_callbacks.plumbing.batch import BatchToXY
from recipe_callbacks.plumbing.callback_base import RecipeCallback
from recipe_callbacks.plumbing.finding import OnFail
from recipe_callbacks.plumbing.observe import observing
from recipe_callbacks.plumbing.validation import check_choice, check_float, check_int

if TYPE_CHECKING:
    import lightning.pytorch as pl

_KEY_NEAR, _KEY_TOO_GOOD = "near_duplicates", "too_good"
_MAX_PAIRS = 8
# The too-good-to-be-true evaluation runs at the first this many validations of a fit.
MAX_EVALUATIONS = 5


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
    same plain task loss, on ``eval_samples`` training and ``eval_samples`` validation samples and warns
    when the validation loss is far below the training loss (below ``max_val_train_ratio`` times
    it, intervals apart: with dropout and augmentation both evaluated in eval mode, only a data
    difference explains it), or when the validation accuracy is near 1.0 in the first epoch (the
    lower end of its 95% interval at least ``max_first_epoch_accuracy``): a label hidden in the
    input, validation copied from training, or a task far easier than it should be.

    Args:
        max_samples: samples read from each set for the near-duplicate search (a seeded subset of
            larger sets; the global RNG is untouched).
        tolerance: largest root-mean-square difference of two continuous signatures (in units of a
            standard deviation) that counts as a near-duplicate.
        token_agreement: smallest fraction of positions with the same token that makes two token
            sequences near-duplicates.
        max_fraction: largest fraction of validation samples with a near-duplicate that passes.
        eval_samples: samples of each set evaluated for the too-good-to-be-true flags.
        max_val_train_ratio: a validation loss below this fraction of the training loss is a flag.
        max_first_epoch_accuracy: a validation accuracy whose 95% interval starts above this in the
            first epoch is a flag.
        thumbnail_size: side of the image thumbnails.
        task: ``"multiclass"``, ``"binary"`` or ``"regression"``; inferred from outputs and targets
            when ``None``.
        seed: seed of the subsets drawn from large sets.
        on_fail: ``"warn"``, ``"raise"`` or ``"ignore"``; this check only ever warns.
        input_key: where the input is in a batch (a dict key or a position); inferred when ``None``.
        target_key: where the target is in a batch; inferred when ``None``.
        batch_to_xy: a function ``batch -> (x, y)`` that replaces both.

    Raises:
        ValueError: a count below 1, a tolerance or fraction out of range, an unknown task or
            ``on_fail``.
        TypeError: a count that is not an int.

    Logged:
        - ``recipe.leakage_check/near_duplicates``: text, the count and a table of the nearest pairs.
        - ``recipe.leakage_check/near_duplicate_pairs``: image, validation sample beside its nearest
          training sample (image inputs with near-duplicates only).
        - ``recipe.leakage_check/train_loss_eval``, ``.../val_loss_eval``, ``.../val_train_ratio``:
          scalars at each validation (eval mode, the plain task loss, ``eval_samples`` of each set).
        - the Findings ``near_duplicates`` (``near_duplicates``, ``near_fraction``, ``min_distance``,
          ``checked_train``, ``checked_val``) and ``too_good`` (``train_loss``, ``val_loss``,
          ``val_train_ratio``, ``val_accuracy``, ``val_accuracy_low``), in the report.

    Cost:
        At the start: reading at most ``max_samples`` samples of each set and a nearest-neighbour
        search (about 0.5 s for 2,000 x 2,000 thumbnails or sequences of 128 tokens on one CPU
        thread), 0 training steps. At each of the first five validations: one no-grad forward
        pass over ``2 * eval_samples`` samples (the total so far is stated in
        ``values["cost_steps"]``, about a third of a training step per batch).

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
    ) -> None:
        super().__init__(on_fail, input_key, target_key, batch_to_xy)
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
        self._flagged = False
        self._cost = 0.0
        self._evaluations = 0

    # ----------------------------------------------------------------- hooks
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._flagged = False
        self._cost = 0.0
        self._evaluations = 0

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.is_resumed(trainer):
            self._near_duplicates(trainer)
        self.finish_early()

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or trainer.global_step == 0 or self.is_resumed(trainer):
            return
        self._too_good(trainer, pl_module)

    # ----------------------------------------------------------------- reading data
    def _val_loaders(self, trainer: pl.Trainer) -> list[DataLoader[Any]]:
        if trainer.val_dataloaders is None:
            try:
                trainer.fit_loop.epoch_loop.val_loop.setup_data()
            except Exception:  # a broken val loader is the user's to meet in validation, not here
                return []
        return all_dataloaders(trainer.val_dataloaders)

    def _inputs(self, trainer: pl.Trainer, loader: DataLoader[Any]) -> list[torch.Tensor] | None:
        """The inputs of at most ``max_samples`` samples, on the CPU; ``None`` after a skip."""
        bounded, _ = bounded_loader(loader, self.max_samples, self.seed)
        out: list[torch.Tensor] = []
        read = 0
        with isolate_rng():
            for batch in bounded:
                resolved = self.resolve(trainer, batch, key=_KEY_NEAR)
                if resolved is None:
                    return None
                x = resolved.x.detach().cpu()
                if x.ndim == 0:
                    x = x.reshape(1)
                out.append(x)
                read += int(x.shape[0])
                if read >= self.max_samples:
                    break
        return out

    def _signatures(self, kind: InputKind, batches: list[torch.Tensor]) -> torch.Tensor:
        if kind == "image":
            return torch.cat([image_signatures(x, self.thumbnail_size) for x in batches])[: self.max_samples]
        if kind == "tokens":
            length = min(int(x.shape[1]) for x in batches)
            return torch.cat([x[:, :length] for x in batches])[: self.max_samples]
        return torch.cat([feature_signatures(x) for x in batches])[: self.max_samples]

    # ----------------------------------------------------------------- near-duplicates
    def _near_duplicates(self, trainer: pl.Trainer) -> None:
        train_loader = first_dataloader(trainer.train_dataloader)
        val_loaders = self._val_loaders(trainer)
        if train_loader is None or not val_loaders:
            self.skip(trainer, "no training and validation data to compare", key=_KEY_NEAR)
            return
        train_x = self._inputs(trainer, train_loader)
        val_x: list[torch.Tensor] = []
        for loader in val_loaders:
            got = self._inputs(trainer, loader)
            if got is None:
                return
            val_x += got
        if not train_x or not val_x:
            if train_x is not None:
                self.skip(trainer, "read no samples to compare", "batch_to_xy", key=_KEY_NEAR)
            return
        kind = input_kind(train_x[0])
        if any(input_kind(x) != kind for x in train_x + val_x):
            self.skip(trainer, "training and validation inputs are of different kinds", "batch_to_xy", key=_KEY_NEAR)
            return
        try:
            train, val = self._signatures(kind, train_x), self._signatures(kind, val_x)
            if kind == "tokens":
                nearest = nearest_tokens(train, val, self.token_agreement)
                limit = 1.0 - self.token_agreement
            else:
                if kind == "features":
                    train, val = standardize_columns(train, val)
                nearest = nearest_continuous(train, val)
                limit = self.tolerance
        except RuntimeError as err:  # inputs of varying shapes
            self.skip(trainer, f"could not compare the inputs: {err}", "batch_to_xy", key=_KEY_NEAR)
            return
        self._report_near(trainer, kind, nearest, limit, int(train.shape[0]))
        near = (nearest.distance <= limit + 1e-12).nonzero().flatten()[:_MAX_PAIRS].tolist()
        if kind == "image" and near:
            self._log_pairs(trainer, torch.cat(val_x), torch.cat(train_x), near, nearest)

    def _log_pairs(
        self, trainer: pl.Trainer, val: torch.Tensor, train: torch.Tensor, positions: list[int], nearest: Nearest
    ) -> None:
        """The near-duplicate pairs side by side: validation sample, its nearest training sample."""
        if val.shape[1] not in (1, 3):
            return
        pictures, captions = [], []
        for p in positions:
            i = int(nearest.index[p])
            pictures += [val[p], train[i]]
            captions += [f"val {p}", f"train {i}"]
        self.log_image(trainer, "near_duplicate_pairs", image_grid(torch.stack(pictures), ncols=2, captions=captions))

    def _report_near(self, trainer: pl.Trainer, kind: InputKind, nearest: Nearest, limit: float, n_train: int) -> None:
        n_val = int(nearest.distance.numel())
        near = nearest.distance <= limit + 1e-12
        count = int(near.sum())
        same = int((nearest.distance == 0).sum())
        fraction = count / max(n_val, 1)
        values = {
            "near_duplicates": float(count),
            "near_fraction": fraction,
            "identical_signatures": float(same),
            "min_distance": float(nearest.distance.min()) if n_val else math.nan,
            "checked_train": float(n_train),
            "checked_val": float(n_val),
            "cost_steps": 0.0,
        }
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
        positions = near.nonzero().flatten()[:_MAX_PAIRS].tolist()
        rows = "".join(f"| {p} | {int(nearest.index[p])} | {float(nearest.distance[p]):.3g} |\n" for p in positions)
        table = f"\n\n| val | nearest train | distance |\n|---|---|---|\n{rows}" if positions else ""
        self.log_text(trainer, "near_duplicates", head + table)
        if fraction > self.max_fraction:
            pairs = ", ".join(f"val {p} ~ train {int(nearest.index[p])}" for p in positions)
            self.report(
                trainer,
                "warn",
                f"{head}: {fraction:.1%} of validation, above max_fraction={self.max_fraction:g} (e.g. {pairs}). "
                "The validation figure partly measures memory of these samples, not generalisation.",
                values,
                "Look at these pairs; deduplicate near copies (augmented or re-encoded versions, frames of one "
                "video, records of one patient) before splitting, or split by group. If they are distinct, raise "
                "LeakageCheck(tolerance=...) or max_fraction.",
                key=_KEY_NEAR,
                log_values=False,
            )
        else:
            self.report(trainer, "pass", head, values, key=_KEY_NEAR, log_values=False)

    # ----------------------------------------------------------------- too good to be true
    def _evaluate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loader: DataLoader[Any]
    ) -> tuple[MeanEstimate, MeanEstimate | None, Task] | str:
        """Loss and accuracy estimates of ``eval_samples`` samples, or the reason it could not run."""
        bounded, _ = bounded_loader(loader, self.eval_samples, self.seed)
        sums = torch.zeros(3, dtype=torch.float64)
        acc_sums = torch.zeros(3, dtype=torch.float64)
        task: Task | None = self.task
        has_acc = True
        read = 0
        with observing(pl_module):
            for batch in bounded:
                resolved = self.resolve(trainer, batch, key=_KEY_TOO_GOOD)
                if resolved is None:
                    return "skipped"
                if resolved.y is None:
                    return "target_key"
                x = move_data_to_device(resolved.x, pl_module.device)
                y = resolved.y.to(pl_module.device)
                try:
                    logits = logits_of(pl_module(x))
                except Exception:  # a forward that wants more than x
                    return "input_key"
                task = task or (infer_task(logits, y) if logits is not None else None)
                if logits is None or task is None:
                    return "task"
                try:
                    losses = per_sample_loss(logits, y, task).cpu()
                except (RuntimeError, ValueError):
                    return "task"
                sums += torch.stack([torch.tensor(float(losses.numel())), losses.sum(), (losses**2).sum()])
                hits = per_sample_metric("accuracy", task, logits, y)
                if hits is None:
                    has_acc = False
                else:
                    hits = hits.cpu()
                    acc_sums += torch.stack([torch.tensor(float(hits.numel())), hits.sum(), (hits**2).sum()])
                self._cost += FORWARD_PASS_STEPS
                read += int(losses.numel())
                if read >= self.eval_samples:
                    break
        if read == 0 or task is None:
            return "empty"
        loss = estimate(*sums.tolist())
        acc = estimate(*acc_sums.tolist()) if has_acc else None
        return loss, acc, task

    def _too_good(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        train_loader = first_dataloader(trainer.train_dataloader)
        val_loader = first_dataloader(trainer.val_dataloaders)
        if train_loader is None or val_loader is None:
            self.skip(trainer, "no training or validation data to evaluate", key=_KEY_TOO_GOOD)
            return
        train = self._evaluate(trainer, pl_module, train_loader)
        val = self._evaluate(trainer, pl_module, val_loader) if not isinstance(train, str) else train
        if isinstance(train, str) or isinstance(val, str):
            reason = train if isinstance(train, str) else str(val)
            if reason != "skipped":
                argument = reason if reason in ("target_key", "input_key", "task") else ""
                self.skip(
                    trainer,
                    "could not evaluate the model's loss on training and validation samples",
                    argument,
                    key=_KEY_TOO_GOOD,
                )
            return
        (t_loss, _, task), (v_loss, v_acc, _) = train, val
        ratio = v_loss.mean / t_loss.mean if t_loss.mean > 0 else math.nan
        apart = math.isfinite(v_loss.half_width) and v_loss.high < t_loss.low
        far_below = math.isfinite(ratio) and ratio < self.max_val_train_ratio and apart
        values = {
            "train_loss": t_loss.mean,
            "val_loss": v_loss.mean,
            "val_train_ratio": ratio,
            "step": float(trainer.global_step),
            "cost_steps": self._cost,
        }
        parts = [
            f"at step {trainer.global_step} (epoch {trainer.current_epoch}), in eval mode with the plain {task} "
            f"loss: training samples {t_loss.text()}, validation samples {v_loss.text()} (ratio {ratio:.2g})"
        ]
        too_accurate = False
        if v_acc is not None and v_acc.count > 0:
            low = wilson_lower(v_acc.mean * v_acc.count, v_acc.count)
            values["val_accuracy"], values["val_accuracy_low"] = v_acc.mean, low
            parts.append(f"validation accuracy {v_acc.mean:.3f} (95% interval from {low:.3f})")
            too_accurate = low >= self.max_first_epoch_accuracy and trainer.current_epoch == 0
        summary = "; ".join(parts)
        self.log_scalars(
            trainer, {"train_loss_eval": t_loss.mean, "val_loss_eval": v_loss.mean, "val_train_ratio": ratio}
        )
        flags = []
        if far_below:
            flags.append(
                f"the validation loss is far below the training loss (below {self.max_val_train_ratio:g}x, intervals "
                "apart), with the same model, mode and loss: validation is easier than training"
            )
        if too_accurate:
            flags.append(
                f"the validation accuracy is near 1.0 in the first epoch (interval above "
                f"{self.max_first_epoch_accuracy:g})"
            )
        if flags:
            self._flagged = True
            self.report(
                trainer,
                "warn",
                f"too good to be true: {' and '.join(flags)}. {summary}.",
                values,
                "Look for leakage: a label (or an ID that encodes it) in the inputs, validation samples copied "
                "from training, a validation set from an easier distribution, or training labels that are noisier "
                "than validation's. If the task is this easy, raise max_first_epoch_accuracy.",
                key=_KEY_TOO_GOOD,
                log_values=False,
            )
        elif not self._flagged:
            self.report(
                trainer, "pass", f"{summary}: nothing too good to be true", values, key=_KEY_TOO_GOOD, log_values=False
            )
