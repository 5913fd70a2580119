"""DataInspector: become one with the data (recipe step 1)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities.seed import isolate_rng
from torch.utils.data import DataLoader, Subset
from typing_extensions import override

from recipe_callbacks.core import data_stats as core
from recipe_callbacks.core.cost import FORWARD_PASS_STEPS
from recipe_callbacks.core.data_stats import Hardest, bounded_loader, first_dataloader, label_counts
from recipe_callbacks.core.pictures import image_grid
from recipe_callbacks.core.skip import CheckSkipped
from recipe_callbacks.core.task import TASKS, Task, aligned, class_indices, infer_task, logits_of, per_sample_loss
from recipe_callbacks.plumbing.batch import BatchToXY, ForwardFn, integer_inputs
from recipe_callbacks.plumbing.callback_base import RecipeCallback, sharded_strategy
from recipe_callbacks.plumbing.finding import OnFail, Status
from recipe_callbacks.plumbing.loaders import val_dataloaders
from recipe_callbacks.plumbing.observe import observing
from recipe_callbacks.plumbing.validation import check_bool, check_choice, check_float, check_int

if TYPE_CHECKING:
    import lightning.pytorch as pl

_MAX_CLASS_SCALARS = 100
_MAX_BARS = 60
_NAN = ("{bad} target value(s) of {of} training samples are NaN or infinite ({rows} samples; the first at sample "
        "{first} in loader order): every loss that sees them is NaN", "drop or impute the missing targets before "
        "training (or mask them out of the loss), and check the preprocessing that produced them")
_DUPLICATES_ADVICE = "Deduplicate: split the data after removing duplicates, or drop these samples from validation."
_SHARDED = ("hardest samples not ranked under {strategy}: the pass over the validation samples runs the model outside "
            "the loop, which would gather the shards on every rank",
            "rank them in a short fit with strategy='ddp' (or one device)")
_HARDEST_ADVICE = "Look at them: mislabelled samples, outliers and corrupt inputs collect at the top."
# The status and advice of each verdict on the label counts.
_LABEL_VERDICT: dict[str, tuple[Status, str]] = {
    "pass": ("pass", ""),
    "one_class": ("fail", "Check the labels: the loader, the label column or the target transform gives one class "
                  "only."),
    "imbalanced": ("warn", "Check the labels; if the imbalance is real, init the final bias to the prior "
                   "(InitLossCheck(fix_bias=True)) and judge with per-class metrics."),
}


class DataInspector(RecipeCallback):
    """Become one with the data (recipe step 1): label distribution, train/val leaks, hardest samples.

    Before training it reads the training set (all of it when it has at most ``max_samples``
    samples, else a seeded random subset of that size; a custom sampler such as a
    ``WeightedRandomSampler`` is followed, since it decides what training sees) and counts the
    labels: a bar chart and a scalar per class; a ``fail`` when every label is the same class, a
    ``warn`` when the largest class outnumbers the smallest by more than ``max_imbalance`` (or a
    class in ``range(num_classes)`` never occurs). Dense labels (one per token or pixel, as in
    language models and segmentation) are counted and shown, but their imbalance, which is the
    rule there, is not judged. :meth:`class_prior` hands the counted prior to
    :class:`~recipe_callbacks.InitLossCheck` on the same Trainer.

    It hashes every input sample it reads from the training set and up to ``max_samples`` of the
    validation set (exact, bit-for-bit copies) and reports how many validation samples also occur
    in training (``fail``: the validation figure is inflated by a leak).

    At the end of training it runs the model forward (eval mode, no grad, isolated RNG) over up to
    ``max_samples`` validation samples, computes each sample's loss (cross-entropy, BCE or MSE,
    inferred from the logits and targets like ``InitLossCheck``) and shows the ``top_k`` highest:
    an image grid captioned ``y<label> p<prediction>`` when the inputs are images, and always a
    table (rank, sample index, loss, label, prediction). Look at them: mislabelled samples,
    outliers and corrupt files sit at the top.

    Args:
        max_samples: most samples read from each of the training and the validation set.
        top_k: how many of the highest-loss validation samples to show.
        max_imbalance: largest class count over the smallest one above which it warns.
        num_classes: number of classes (classes that never occur are then reported); inferred
            from the largest label when ``None``.
        task: ``"multiclass"``, ``"binary"`` or ``"regression"`` for the per-sample loss;
            inferred when ``None`` (:func:`~recipe_callbacks.core.task.infer_task`).
        check_duplicates: hash samples to find validation samples that are also in training.
        show_hardest: show the highest-loss validation samples at the end of training.
        seed: seed of the generator that picks the subset of a large data set.
        on_fail: ``"warn"``, ``"raise"`` or ``"ignore"`` (see :class:`~recipe_callbacks.RecipeCallback`).
        input_key: where the input is in a batch; inferred when ``None``.
        target_key: where the target is in a batch; inferred when ``None``.
        batch_to_xy: a function ``batch -> (x, y)`` for batches of any other shape.
        forward_fn: how to run the model the way your step does (a method name or a function
            ``(pl_module, batch) -> output``); see :class:`~recipe_callbacks.RecipeCallback`.

    Raises:
        ValueError: for counts or thresholds out of range.
        TypeError: for arguments of the wrong type.

    Logged:
        - ``recipe.data_inspector/label_distribution``: figure, a bar per class of the training label
          counts (the 60 most frequent classes when there are more), missing and rare classes red.
        - ``recipe.data_inspector/label_counts``: text, a table of the samples of each class (up to 100 classes).
        - ``recipe.data_inspector/finding``: text, the Findings with their values: ``samples``,
          ``num_classes``, ``present_classes``, ``imbalance_ratio``, ``majority_fraction``,
          ``cost_steps`` (labels); ``duplicates``, ``duplicate_fraction``, ``checked_train``,
          ``checked_val`` (leaks); ``hardest_loss``, ``mean_val_loss``, ``val_samples``,
          ``hardest_cost_steps`` (hardest samples).
        - ``recipe.data_inspector/targets``: histogram of the targets when they are not classes.
        - ``recipe.data_inspector/hardest_samples``: image grid (image inputs) and Markdown table.

    Example::

        trainer = Trainer(callbacks=[DataInspector(top_k=25), InitLossCheck(), RecipeReport()])
    """

    def __init__(
        self, max_samples: int = 10000, top_k: int = 16, max_imbalance: float = 20.0, num_classes: int | None = None,
        task: Task | None = None, check_duplicates: bool = True, show_hardest: bool = True, seed: int = 0,
        on_fail: OnFail = "warn", input_key: str | None = None, target_key: str | None = None,
        batch_to_xy: BatchToXY | None = None, forward_fn: ForwardFn | str | None = None,
    ) -> None:
        super().__init__(on_fail, input_key, target_key, batch_to_xy, forward_fn)
        owner = type(self).__name__
        self.max_samples = check_int(owner, "max_samples", max_samples)
        self.top_k = check_int(owner, "top_k", top_k)
        self.max_imbalance = check_float(owner, "max_imbalance", max_imbalance, minimum=1.0, inclusive_minimum=True)
        self.num_classes = None if num_classes is None else check_int(owner, "num_classes", num_classes, minimum=2)
        self.task: Task | None = None if task is None else check_choice(owner, "task", task, TASKS)
        self.check_duplicates = check_bool(owner, "check_duplicates", check_duplicates)
        self.show_hardest = check_bool(owner, "show_hardest", show_hardest)
        self.seed = check_int(owner, "seed", seed, minimum=0)
        self._reset()

    def _reset(self) -> None:
        self._counted = False
        self._prior: torch.Tensor | None = None
        self._train_hashes: list[bytes] = []
        self.label_counts: torch.Tensor | None = None
        self.hardest_indices: torch.Tensor | None = None
        self.hardest_losses: torch.Tensor | None = None

    # ----------------------------------------------------------------- public
    def class_prior(self, trainer: pl.Trainer | None = None) -> torch.Tensor | None:
        """The training label frequencies ``(C,)`` (binary targets: ``[negatives, positives]``),
        or ``None`` when the targets are not classes or were not counted.

        Counted in ``on_train_start``; given a ``trainer`` before that, it counts now (so the order
        of the callbacks on the Trainer does not matter).
        """
        if not self._counted and trainer is not None:
            with self.skipping(trainer):  # called from another check's hook: our skip is ours
                self._inspect_labels(trainer)
        return None if self._prior is None else self._prior.clone()

    # ----------------------------------------------------------------- hooks
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._reset()

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._counted:
            with self.stopwatch() as watch, self.skipping(trainer):
                self._inspect_labels(trainer)
            self.state_cost(watch.seconds, key="labels")
        if self.check_duplicates:
            with self.stopwatch() as watch, self.skipping(trainer):
                self._check_duplicates(trainer)
            self.state_cost(watch.seconds, key="duplicates")
        self._train_hashes = []

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.show_hardest:
            with self.stopwatch() as watch, self.skipping(trainer):
                self._show_hardest(trainer, pl_module)
            self.state_cost(watch.seconds, key="hardest", field="hardest_cost_steps")
        super().on_train_end(trainer, pl_module)

    # ----------------------------------------------------------------- reading data
    def _read(self, trainer: pl.Trainer, loader: DataLoader[Any], key: str,
              hashes: list[bytes] | None) -> tuple[list[torch.Tensor], int, int]:
        """Read a bounded subset: hash its inputs into ``hashes`` (when given) and return
        ``(targets, samples read, data set size)``. Inputs are not kept."""
        bounded, size = bounded_loader(loader, self.max_samples, self.seed, reading=True)
        targets: list[torch.Tensor] = []
        read = 0
        with isolate_rng():
            for batch in bounded:
                resolved = self.resolved(batch, key=key)
                if hashes is not None:
                    hashes += core.sample_hashes(resolved.x)
                if resolved.y is not None:
                    targets.append(resolved.y.detach().cpu())
                read += int(resolved.x.shape[0]) if resolved.x.ndim else 1
                if read >= self.max_samples:
                    break
        return targets, read, size

    # ----------------------------------------------------------------- labels
    def _inspect_labels(self, trainer: pl.Trainer) -> None:
        self._counted = True
        key = "labels"
        loader = first_dataloader(trainer.train_dataloader)
        if loader is None:
            raise CheckSkipped("found no training DataLoader to inspect", "", key=key)
        self._train_hashes = []
        targets, read, size = self._read(trainer, loader, key, self._train_hashes if self.check_duplicates else None)
        if not targets:
            raise CheckSkipped("the training batches have no target to count", "target_key", key=key)
        targets = [class_indices(t) for t in targets]  # one-hot / probability targets count as their argmax
        try:
            y = torch.cat([t.detach().cpu().reshape(t.shape[0], -1) for t in targets])
        except RuntimeError as err:
            raise CheckSkipped(f"could not stack the training targets: {err}", "target_key", key=key) from err
        of = f"{read} of {size}" if size >= 0 else f"the first {read}"
        if y.is_floating_point() and not bool(torch.isfinite(y).all()):
            bad = ~torch.isfinite(y)
            rows = bad.reshape(bad.shape[0], -1).any(dim=1)
            first = int(rows.nonzero()[0, 0])
            summary = _NAN[0].format(bad=int(bad.sum()), of=of, rows=int(rows.sum()), first=first)
            values = {"samples": float(read), "nonfinite_targets": float(bad.sum()), "cost_steps": 0.0}
            self.report(trainer, "fail", summary, values, _NAN[1], key=key)
            return
        classes = self.task in ("multiclass", "binary") or (self.task is None and core.is_class_target(y))
        if not classes:
            self.log_histogram(trainer, "targets", y)
            summary = (f"targets of {of} training samples are continuous: mean {float(y.double().mean()):.4g}, std "
                       f"{float(y.double().std()):.4g}, range [{float(y.min()):.4g}, {float(y.max()):.4g}]")
            self.report(trainer, "pass", summary, {"samples": float(read), "cost_steps": 0.0}, key=key)
            return
        self._report_labels(trainer, label_counts(y, self.num_classes), of, read, dense=y.shape[1] > 1)

    def _report_labels(self, trainer: pl.Trainer, counts: torch.Tensor, of: str, read: int, dense: bool) -> None:
        total = int(counts.sum())
        if total == 0:
            raise CheckSkipped("no labels were counted (all negative / ignored)", "target_key", key="labels")
        self.label_counts = counts
        self._prior = counts.to(torch.float64) / total
        present, ratio = int((counts > 0).sum()), core.imbalance_ratio(counts)
        values = {
            "samples": float(read), "num_classes": float(counts.numel()), "present_classes": float(present),
            "imbalance_ratio": ratio, "majority_fraction": float(counts.max()) / total, "cost_steps": 0.0,
        }
        self.log_figure(trainer, "label_distribution", core.label_chart, counts, of, self.max_imbalance, _MAX_BARS)
        if counts.numel() <= _MAX_CLASS_SCALARS:
            self.log_text(trainer, "label_counts", core.label_table(counts))
        shares = ", ".join(f"{c}: {int(n)}" for c, n in enumerate(counts[:12]))
        more = ", ..." if counts.numel() > 12 else ""
        head = f"label counts over {of} training samples: {{{shares}{more}}}"
        verdict = core.judge_labels(counts, self.max_imbalance, dense)
        if verdict == "one_class":
            summary = f"every label is class {int(counts.argmax())} ({head})"
        elif verdict == "imbalanced":
            missing = [c for c in range(counts.numel()) if counts[c] == 0]
            what = f"classes {missing[:10]} never occur" if missing else f"imbalance {ratio:.3g}:1"
            summary = f"extremely imbalanced: {what} ({head})"
        else:
            per = " (labels per token / pixel: imbalance is reported, not judged)" if dense else ""
            summary = f"{head}; {present} classes present, imbalance {ratio:.3g}:1{per}"
        status, advice = _LABEL_VERDICT[verdict]
        self.report(trainer, status, summary, values, advice, key="labels")

    # ----------------------------------------------------------------- leaks
    def _check_duplicates(self, trainer: pl.Trainer) -> None:
        key = "duplicates"
        if not self._train_hashes:
            raise CheckSkipped("read no training samples to compare (see the label finding)", "batch_to_xy", key=key)
        loaders = val_dataloaders(trainer)
        if not loaders:
            raise CheckSkipped("no validation data to compare with the training set", "", key=key)
        val_hashes: list[bytes] = []
        for loader in loaders:
            self._read(trainer, loader, key, val_hashes)
        val_hashes = val_hashes[: self.max_samples]
        shared = core.shared_samples(self._train_hashes, val_hashes)
        n_train, n_val = len(self._train_hashes), len(val_hashes)
        values = {
            "duplicates": float(len(shared)), "duplicate_fraction": len(shared) / max(n_val, 1),
            "checked_train": float(n_train), "checked_val": float(n_val),
        }
        head = f"{len(shared)} of {n_val} validation samples are exact copies of one of {n_train} training samples"
        if not shared:
            self.report(trainer, "pass", head, values, key=key)
            return
        summary = f"{head} (first validation positions: {shared[:10]}): the validation figure measures memory, not "
        self.report(trainer, "fail", summary + "generalisation.", values, _DUPLICATES_ADVICE, key=key)

    # ----------------------------------------------------------------- hardest samples
    def _show_hardest(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        key = "hardest"
        strategy = sharded_strategy(trainer)
        if strategy is not None:
            self.report(trainer, "skip", _SHARDED[0].format(strategy=strategy), {}, _SHARDED[1], key=key)
            return
        loader = first_dataloader(val_dataloaders(trainer))
        if loader is None:
            raise CheckSkipped("no validation data to rank by loss", "", key=key)
        bounded, _ = bounded_loader(loader, self.max_samples, self.seed)
        subset = bounded.dataset.indices if isinstance(bounded.dataset, Subset) else None
        hardest = Hardest(self.top_k)
        batches, images = 0, True
        with observing(pl_module):
            for batch in bounded:
                images = self._rank_batch(pl_module, batch, hardest) and images
                batches += 1
                if hardest.seen >= self.max_samples:
                    break
        if hardest.seen == 0:
            raise CheckSkipped("the validation set is empty", "", key=key)
        seen, mean, positions = hardest.seen, hardest.total / hardest.seen, hardest.positions
        if subset is not None:
            positions = torch.tensor([subset[int(p)] for p in positions], dtype=torch.long)
        self.hardest_indices, self.hardest_losses = positions, hardest.losses
        self.log_text(trainer, "hardest_samples", core.hardest_table(hardest, positions))
        if images and hardest.inputs:
            captions = [f"y{t} p{p}" for t, p in zip(hardest.targets, hardest.predictions, strict=False)]
            self.log_figure(trainer, "hardest_samples", image_grid, torch.stack(hardest.inputs).float(),
                            captions=captions)
        top = ", ".join(f"#{int(i)} ({float(v):.3g})" for i, v in zip(positions[:5], hardest.losses[:5], strict=False))
        summary = (f"the {len(positions)} highest-loss of {seen} validation samples: {top}; mean loss {mean:.4g}. "
                   f"See {self.tag('hardest_samples')}.")
        values = {"hardest_loss": float(hardest.losses[0]), "mean_val_loss": mean, "val_samples": float(seen),
                  "hardest_cost_steps": batches * FORWARD_PASS_STEPS}
        self.report(trainer, "pass", summary, values, _HARDEST_ADVICE, key=key)

    def _rank_batch(self, pl_module: pl.LightningModule, batch: Any, hardest: Hardest) -> bool:
        """Add one validation batch's per-sample losses to ``hardest``; whether its inputs are images."""
        key = "hardest"
        resolved = self.resolved(batch, key=key)
        on_device = move_data_to_device(batch, pl_module.device)
        resolved_on_device = self.resolved(on_device, key=key)
        if resolved.y is None or resolved_on_device.y is None:
            raise CheckSkipped("the validation batches have no target to rank by loss", "target_key", key=key)
        y = resolved_on_device.y
        try:
            logits = logits_of(self.run_model(pl_module, on_device, resolved_on_device))
        except Exception as err:  # a forward that wants more than x: say so, do not break training
            raise CheckSkipped(f"running the model on the batch failed: {type(err).__name__}: {err}", "forward_fn",
                               key=key) from err
        if logits is not None:
            logits, y = aligned(logits, y, integer_inputs(on_device, resolved_on_device))
        task = self.task or (infer_task(logits, y) if logits is not None else None)
        if logits is None or task is None:
            raise CheckSkipped("could not tell the per-sample loss from the model's output and targets", "task",
                               key=key)
        try:
            losses = per_sample_loss(logits, y, task)
        except (RuntimeError, ValueError) as err:  # a task= that does not fit the shapes
            raise CheckSkipped(f"could not compute the {task} loss: {err}", "task", key=key) from err
        # one copy of the batch's losses, logits and targets to the host, not one read per sample
        losses, host_logits, host_y = losses.detach().cpu(), logits.detach().cpu(), y.detach().cpu()
        labels = class_indices(host_y) if task == "multiclass" else host_y
        hardest.add(losses, resolved.x, labels, core.predictions(host_logits, host_y, task))
        return core.looks_like_images(resolved.x)
