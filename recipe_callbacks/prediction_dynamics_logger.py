"""PredictionDynamicsLogger: recipe step 2k, the model's predictions on a fixed batch over training."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.utilities.seed import isolate_rng
from torch.utils.data import DataLoader, IterableDataset
from typing_extensions import override

from recipe_callbacks.core.data_stats import first_dataloader
from recipe_callbacks.core.pictures import image_grid, matrix_chart
from recipe_callbacks.core.prediction_jitter import (
    RecordHistory,
    Snapshot,
    flip_rate,
    jitter,
    judge_dynamics,
    snapshot,
    target_scale,
)
from recipe_callbacks.core.short_training import take_samples
from recipe_callbacks.core.skip import CheckSkipped
from recipe_callbacks.core.task import TASKS, Task, aligned, logits_of, require_task
from recipe_callbacks.plumbing.batch import BatchToXY, ForwardFn, ResolvedBatch, integer_inputs, resolve_batch
from recipe_callbacks.plumbing.callback_base import RecipeCallback
from recipe_callbacks.plumbing.finding import OnFail
from recipe_callbacks.plumbing.observe import observing
from recipe_callbacks.plumbing.validation import check_choice, check_float, check_int

if TYPE_CHECKING:
    import lightning.pytorch as pl

_OWNER = "PredictionDynamicsLogger"


class PredictionDynamicsLogger(RecipeCallback):
    """Records the model's predictions on a fixed set of validation samples every few steps.

    The samples are chosen once (the first ``num_samples`` of the validation dataloader's
    dataset, or ``indices``), kept on the model's device and in the callback's ``state_dict``,
    so a resumed run watches the very same samples. Every ``every_n_steps`` optimizer steps the
    model predicts on them in eval mode, without gradients and with an isolated RNG (the
    training is not changed). From consecutive records it logs the **jitter** (mean absolute
    change of the probability given to the true class, or of the regression prediction in units
    of the targets' standard deviation) and the **flip rate** (fraction of predictions whose class
    changed to or from a confident prediction: an argmax over near-uniform probabilities flips with
    every small update and says nothing about the learning rate). At the end of training a Finding
    flags a learning rate that is too high when, after the first ``warmup_fraction`` of training, the
    predictions go back and forth: the movement per record that was undone again (the part of the
    jitter that is not progress, counted over every late record, bursts included) is above
    ``max_jitter``, or the median flip rate is above ``max_flip_rate`` while at least
    ``min_back_and_forth`` of the movement was undone. A model that is still learning moves
    steadily and is not flagged, however fast it moves. The math is in
    :mod:`recipe_callbacks.core.prediction_jitter`.

    Cost: one eval-mode forward pass of ``num_samples`` samples every ``every_n_steps`` steps and
    nothing on the other steps (no hooks); at the defaults (16 samples every 50 steps) about
    16 / (3 x batch size x 50) of a training step on average, e.g. 0.3% for batches of 32, plus a
    heat map and a sample grid every 10 records. Memory: the fixed samples (kept on the device)
    and at most ``max_records`` x ``num_samples`` numbers.

    Args:
        num_samples: how many fixed samples to watch (the first ones of the dataset).
        every_n_steps: record the predictions every this many optimizer steps (and once at the
            start of training).
        indices: dataset indices of the samples to watch; overrides ``num_samples``.
        source: ``"val"`` takes the samples from the validation dataloader, ``"train"`` from the
            training dataloader (for runs without validation).
        task: ``None`` (or ``"auto"``) infers it with :func:`~recipe_callbacks.core.task.infer_task`,
            as the other checks do (class indices for the logits' class axis: multiclass; one logit per
            target and 0/1 targets, float ones too: binary; other float targets: regression);
            ``"multiclass"``, ``"binary"`` or ``"regression"`` say it, with the same meaning as in the
            other checks; ``"classification"`` says one of the first two.
        max_jitter: the undone movement per record after warm-up (jitter that went back and forth, in
            probability or target standard deviations) above which the learning rate is flagged.
        max_flip_rate: the median flip rate after warm-up above which it is flagged.
        min_confidence: a class change counts as a flip only when the top probability was at least
            this fraction of the way from chance (``1/C``) to certainty at one of the two records
            (0.5: above 0.75 for 2 classes, 0.55 for 10); 0 counts every change.
        warmup_fraction: the first part of training (a fraction of the steps seen) that is not
            judged: predictions are expected to move a lot there.
        min_back_and_forth: a high flip rate is flagged only when, after warm-up, at least this fraction
            of the way the predictions travelled was undone (they went back and forth); steady
            movement of a model that is still learning is not flagged.
        max_records: records kept for the heat map and the verdict; when full, every other one is
            dropped, so the history spans the whole run in bounded memory.
        pictures_every_n_records: log the heat map and the sample grid every this many records
            (and at the end of training). A heat-map figure costs about 0.1-0.2 s of matplotlib, so
            the default (every 5,000 steps at ``every_n_steps=50``) keeps it far below 1% of a
            run of fast steps.
        on_fail: see :class:`~recipe_callbacks.plumbing.callback_base.RecipeCallback`.
        input_key: where the input is in a batch; inferred when ``None``.
        target_key: where the target is in a batch; inferred when ``None``.
        batch_to_xy: a function ``batch -> (x, y)`` for other batch shapes.
        forward_fn: how to run the model the way your step does (a method name or a function
            ``(pl_module, batch) -> output``); see :class:`~recipe_callbacks.RecipeCallback`.

    Raises:
        ValueError: for an argument out of range or not one of its choices.
        TypeError: for an argument of the wrong type.

    Logged:
        - ``recipe.prediction_dynamics_logger/jitter``: mean absolute change of the tracked
          prediction since the previous record (every record after the first).
        - ``recipe.prediction_dynamics_logger/flip_rate``: fraction of predictions whose class
          changed since the previous record to or from a confident one (classification).
        - ``recipe.prediction_dynamics_logger/fixed_batch_loss``: loss on the fixed samples
          (cross-entropy, binary cross-entropy with logits, or mean squared error for regression).
        - ``recipe.prediction_dynamics_logger/heatmap`` (figure): samples (rows) x global steps
          (columns, left to right) with a colour bar: the probability of the true class (0 dark, 1
          yellow) or the absolute regression error.
        - ``recipe.prediction_dynamics_logger/samples`` (image, for image inputs): the fixed
          samples captioned ``y=<label> p=<prediction>``.
        - At the end: a Finding (text ``recipe.prediction_dynamics_logger/finding``) with its values
          ``late_jitter``, ``late_flip_rate``, ``max_jitter``, ``max_flip_rate``,
          ``back_and_forth``, ``undone_jitter``, ``records``, ``learning_rate``.

    Example::

        trainer = Trainer(callbacks=[PredictionDynamicsLogger(num_samples=16, every_n_steps=50)])
    """

    sharded_reason: ClassVar[str] = (
        "its forward passes of the fixed samples outside the training step would gather the shards on "
        "every rank at every record"
    )

    def __init__(
        self,
        num_samples: int = 16,
        every_n_steps: int = 50,
        indices: list[int] | None = None,
        source: Literal["val", "train"] = "val",
        task: str | None = None,
        max_jitter: float = 0.04,
        max_flip_rate: float = 0.1,
        min_confidence: float = 0.5,
        warmup_fraction: float = 0.3,
        min_back_and_forth: float = 0.5,
        max_records: int = 256,
        pictures_every_n_records: int = 100,
        on_fail: OnFail = "warn",
        input_key: str | None = None,
        target_key: str | None = None,
        batch_to_xy: BatchToXY | None = None,
        forward_fn: ForwardFn | str | None = None,
    ) -> None:
        super().__init__(on_fail, input_key, target_key, batch_to_xy, forward_fn)
        self.num_samples = check_int(_OWNER, "num_samples", num_samples)
        self.every_n_steps = check_int(_OWNER, "every_n_steps", every_n_steps)
        if indices is not None:
            if not isinstance(indices, (list, tuple)) or not indices:
                raise TypeError(f"{_OWNER}(indices={indices!r}): indices must be None or a non-empty list of ints")
            indices = [check_int(_OWNER, "indices", i, minimum=0) for i in indices]
        self.indices = indices
        self.source: Literal["val", "train"] = check_choice(_OWNER, "source", source, ("val", "train"))
        # One meaning of ``task`` across the callbacks (a preset hands the same value to all):
        # None/"auto" infers it; "multiclass", "binary", "regression" say it; "classification"
        # says one of the first two.
        self.task: str | None = check_choice(_OWNER, "task", task, (None, "auto", "classification", *TASKS))
        if self.task == "auto":
            self.task = None
        self.max_jitter = check_float(_OWNER, "max_jitter", max_jitter)
        self.max_flip_rate = check_float(_OWNER, "max_flip_rate", max_flip_rate, maximum=1.0)
        self.min_confidence = check_float(
            _OWNER, "min_confidence", min_confidence, maximum=1.0, inclusive_minimum=True
        )
        self.warmup_fraction = check_float(
            _OWNER, "warmup_fraction", warmup_fraction, maximum=0.95, inclusive_minimum=True
        )
        self.min_back_and_forth = check_float(_OWNER, "min_back_and_forth", min_back_and_forth, maximum=1.0)
        self.max_records = check_int(_OWNER, "max_records", max_records, minimum=8)
        self.pictures_every_n_records = check_int(_OWNER, "pictures_every_n_records", pictures_every_n_records)
        self._reset()

    def _reset(self) -> None:
        # The fixed samples: CPU copies (state) and device copies (cache).
        self.sample_x: torch.Tensor | None = None
        self.sample_y: torch.Tensor | None = None
        self.sample_indices: torch.Tensor | None = None
        self._device_xy: tuple[torch.Tensor, torch.Tensor] | None = None
        self._sample_batch: Any = None  # the fixed samples as the batch the model's step receives (CPU)
        # (device samples, model batch, its resolution, integer inputs): built at the first record
        self._ready: tuple[torch.Tensor, Any, ResolvedBatch, list[torch.Tensor]] | None = None
        self._host_y: torch.Tensor | None = None  # the targets the outputs are scored on, on the host
        self._task: Task | None = None
        self._scale = 1.0
        self._disabled = False
        # The capped history, one entry per record.
        self.history = RecordHistory(self.max_records)
        self._previous: Snapshot | None = None
        self._nonfinite_step = -1
        self._records_since_picture = 0

    @property
    def state_key(self) -> str:
        # Lightning reads state_key around every hook call: build it once.
        key: str | None = self.__dict__.get("_state_key_cache")
        if key is None:
            key = self.__dict__["_state_key_cache"] = self._generate_state_key(
                num_samples=self.num_samples, every_n_steps=self.every_n_steps
            )
        return key

    # ----------------------------------------------------------------- hooks
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._disabled = False
        if self.sample_x is None and not self._choose_samples(trainer):
            self._disabled = True
            return
        if not self.history.steps or self.history.steps[-1] != trainer.global_step:
            self._record(trainer, pl_module)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if self._disabled or step % self.every_n_steps or (self.history.steps and self.history.steps[-1] == step):
            return
        self._record(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._disabled:
            return
        if self.history.steps and self.history.steps[-1] != trainer.global_step:
            self._record(trainer, pl_module)
        if not self._disabled:
            self._log_pictures(trainer)
            self._judge(trainer)

    # ----------------------------------------------------------------- the fixed samples
    def _choose_samples(self, trainer: pl.Trainer) -> bool:
        loaders = trainer.val_dataloaders if self.source == "val" else trainer.train_dataloader
        loader = first_dataloader(loaders)
        if loader is None:
            other = "train" if self.source == "val" else "val"
            reason = f"no {self.source} DataLoader to take the fixed samples from; try source={other!r}"
            self.skip(trainer, reason, "source")
            return False
        try:
            with isolate_rng():  # a dataset's __getitem__ may draw random augmentations
                batch = self._fixed_batch(trainer, loader)
        except Exception as err:  # the user's training must go on
            self.skip(trainer, f"reading the fixed samples from the {self.source} data failed ({err!r})", "indices")
            return False
        if batch is None:
            return False
        resolved = self.resolve(trainer, batch)
        if resolved is None:
            return False
        if resolved.y is None:
            self.skip(trainer, "the batches have no target to compare the predictions with", "target_key")
            return False
        k = len(self.indices) if self.indices is not None else self.num_samples
        self.sample_x = resolved.x[:k].detach().cpu().clone()
        self.sample_y = resolved.y[:k].detach().cpu().clone()
        if resolved.with_input is not None:
            self._sample_batch = move_data_to_device(take_samples(batch, k, int(resolved.x.shape[0])), "cpu")
        return True

    def _fixed_batch(self, trainer: pl.Trainer, loader: DataLoader[Any]) -> Any:
        dataset = loader.dataset
        map_style = not isinstance(dataset, IterableDataset) and hasattr(dataset, "__len__")
        if map_style and loader.batch_size is not None:
            size = len(dataset)  # type: ignore[arg-type]
            chosen = self.indices if self.indices is not None else list(range(min(self.num_samples, size)))
            bad = [i for i in chosen if i >= size]
            if bad:
                self.skip(trainer, f"indices {bad} are out of range for a dataset of {size} samples", "indices")
                return None
            self.sample_indices = torch.tensor(chosen, dtype=torch.long)
            return loader.collate_fn([dataset[i] for i in chosen])
        if self.indices is not None:
            self.skip(trainer, "indices need a map-style dataset (with __len__ and __getitem__)", "indices")
            return None
        # Iterable datasets: the first batch, cut to num_samples.
        return next(iter(loader), None)

    def _device_samples(self, pl_module: pl.LightningModule) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.sample_x is not None and self.sample_y is not None
        if self._device_xy is None or self._device_xy[0].device != pl_module.device:
            self._device_xy = (self.sample_x.to(pl_module.device), self.sample_y.to(pl_module.device))
        return self._device_xy

    # ----------------------------------------------------------------- one record
    def _predict(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The outputs on the fixed samples and the targets they are scored on (:func:`aligned`)."""
        x, y = self._device_samples(pl_module)
        try:
            precision = trainer.precision_plugin  # e.g. float64 inputs under precision="64-true"
            if self._ready is None or self._ready[0] is not x:
                self._ready = (x, *self._model_batch(precision, x, y, pl_module))
            _, batch, resolved, integers = self._ready
            if resolved.with_input is not None:  # a fresh container: the model may change what it is given
                batch = resolved.with_input(resolved.x)
            with observing(pl_module), precision.val_step_context():
                output = logits_of(self.run_model(pl_module, batch, resolved))
        except Exception as err:  # the user's training must go on
            self.skip(trainer, f"running the model on the fixed samples failed ({err!r})", "forward_fn")
            return None
        if output is None:
            self.skip(trainer, "the model did not return a tensor (or a dict/ModelOutput with 'logits')", "forward_fn")
            return None
        return aligned(output, y, integers)

    def _model_batch(
        self, precision: Any, x: torch.Tensor, y: torch.Tensor, pl_module: pl.LightningModule
    ) -> tuple[Any, ResolvedBatch, list[torch.Tensor]]:
        """The fixed samples as the batch the model's step receives, resolved once per device."""
        batch: Any = (x, y)
        if self._sample_batch is not None:
            batch = move_data_to_device(self._sample_batch, pl_module.device)
        resolved = resolve_batch(batch, self.input_key, self.target_key, None)
        batch = resolved.with_input(precision.convert_input(resolved.x)) if resolved.with_input else batch
        resolved = resolve_batch(batch, self.input_key, self.target_key, None)
        return batch, resolved, integer_inputs(batch, resolved)

    def _resolve_task(self, trainer: pl.Trainer, output: torch.Tensor, y: torch.Tensor) -> Task | None:
        try:
            if self.task == "regression":
                if output.numel() != y.numel():
                    raise ValueError(f"outputs {tuple(output.shape)} and targets {tuple(y.shape)} differ in size")
                return "regression"
            if self.task is not None:  # a classification: float labels are class indices or 0/1 here
                found = require_task(output, y.long() if y.is_floating_point() else y)
                if self.task != "classification" and found != self.task:
                    raise ValueError(f"task={self.task!r}, but outputs {tuple(output.shape)} with targets "
                                     f"{tuple(y.shape)} are a {found} task")
                return found
            return require_task(output, y)
        except ValueError as err:
            self.skip(trainer, f"cannot compare the predictions with the targets: {err}", "task")
            return None

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        predicted = self._predict(trainer, pl_module)
        if predicted is None:
            self._disabled = True
            return
        # One device-to-host transfer per record: the K fixed outputs (the targets once); the rest
        # is K-sized CPU work.
        output = predicted[0].detach().float().cpu()
        if self._host_y is None:
            self._host_y = predicted[1].detach().cpu()
        y = self._host_y
        if self._task is None:
            self._task = self._resolve_task(trainer, output, y)
            if self._task is None:
                self._disabled = True
                return
            self._scale = target_scale(y) if self._task == "regression" else 1.0
        snap = snapshot(output, y, self._task, self.min_confidence)
        step = int(trainer.global_step)
        if self._nonfinite_step < 0 and not bool(torch.isfinite(output).all()):
            self._nonfinite_step = step
        scalars = {"fixed_batch_loss": snap.loss}
        jit, flips = math.nan, math.nan
        if self._previous is not None:
            jit = jitter(self._previous.tracked, snap.tracked, self._scale)
            scalars["jitter"] = jit
            if snap.classes is not None and self._previous.classes is not None:
                flips = flip_rate(self._previous.classes, snap.classes, self._previous.confident, snap.confident)
                scalars["flip_rate"] = flips
        self._previous = snap
        self.history.add(step, snap.per_sample.float(), jit, flips, snap.loss)
        self.log_scalars(trainer, scalars, step)
        self._records_since_picture += 1
        if self._records_since_picture >= self.pictures_every_n_records:
            self._log_pictures(trainer)

    @property
    def steps(self) -> list[int]:
        """The global steps of the kept records (oldest first)."""
        return self.history.steps

    @property
    def jitters(self) -> list[float]:
        """The jitter of each kept record (NaN for the first)."""
        return self.history.jitters

    @property
    def losses(self) -> list[float]:
        """The fixed-batch loss of each kept record."""
        return self.history.losses

    def heatmap_matrix(self) -> torch.Tensor:
        """``(K, R)``: one row per fixed sample, one column per kept record (oldest left)."""
        return self.history.heatmap_matrix()

    def _log_pictures(self, trainer: pl.Trainer) -> None:
        self._records_since_picture = 0
        if not trainer.is_global_zero or not self.history.per_sample:
            return
        classification = self._task != "regression"
        matrix = self.heatmap_matrix().numpy()
        self.log_figure(
            trainer, "heatmap", matrix_chart, matrix, vmin=0.0, vmax=1.0 if classification else None,
            cmap="viridis" if classification else "magma",
            x_values=self.history.steps[-matrix.shape[1]:],
            title="PredictionDynamicsLogger: "
            + ("p(true class) per fixed sample; rows should turn bright and stay" if classification
               else "error per fixed sample; rows should darken and stay"),
            xlabel="global step", ylabel="fixed validation sample",
            colorbar_label="p(true class)" if classification else "|prediction - target|",
        )
        x = self.sample_x
        if x is None or x.ndim != 4 or x.shape[1] not in (1, 3) or self._previous is None:
            return
        y = self.sample_y
        assert y is not None
        if classification and self._previous.classes is not None and self._previous.classes.ndim == 1:
            predicted = self._previous.classes.cpu().tolist()
            captions = [f"y={int(t)} p={int(p)}" for t, p in zip(y.flatten().tolist(), predicted, strict=False)]
        elif not classification and self._previous.tracked.ndim == 1:
            predicted_values = self._previous.tracked.cpu().tolist()
            captions = [f"y={t:.2g} p={p:.2g}" for t, p in zip(y.flatten().tolist(), predicted_values, strict=False)]
        else:
            captions = None
        self.log_figure(trainer, "samples", image_grid, x.float(), captions=captions)

    def _learning_rate(self, trainer: pl.Trainer) -> float:
        try:
            return float(trainer.optimizers[0].param_groups[0]["lr"])
        except (IndexError, KeyError, TypeError, ValueError):
            return math.nan

    def _judge(self, trainer: pl.Trainer) -> None:
        lr = self._learning_rate(trainer)
        lr_text = f"the learning rate ({lr:.3g})" if math.isfinite(lr) else "the learning rate"
        k = len(self.history.per_sample[0]) if self.history.per_sample else 0
        if self._nonfinite_step >= 0:
            self.report(
                trainer,
                "fail",
                f"the predictions on the {k} fixed samples became NaN/inf at step {self._nonfinite_step}",
                {"nonfinite_step": float(self._nonfinite_step), "learning_rate": lr},
                f"training diverged: lower {lr_text} (e.g. 10x), add gradient clipping or warm-up, and check "
                "the loss and the inputs for NaN",
            )
            return
        classification = self._task != "regression"
        d = judge_dynamics(self.history, self.warmup_fraction, scale=self._scale, max_jitter=self.max_jitter,
                           max_flip_rate=self.max_flip_rate, min_back_and_forth=self.min_back_and_forth,
                           classification=classification)
        if d.late_records < 3:
            steps = self.history.steps[-1] if self.history.steps else 0
            raise CheckSkipped(f"only {d.late_records} records after the first {self.warmup_fraction:.0%} of training "
                               f"(every_n_steps={self.every_n_steps}, {steps} steps); need 3", "every_n_steps")
        values = {"late_jitter": d.late_jitter, "max_jitter": self.max_jitter,
                  "records": float(len(self.history.steps)), "learning_rate": lr}
        if classification:
            values.update({"late_flip_rate": d.late_flip_rate, "max_flip_rate": self.max_flip_rate})
        values.update({"back_and_forth": d.back_and_forth, "undone_jitter": d.undone_jitter})
        unit = "" if classification else " target std"
        seen = f"after the first {self.warmup_fraction:.0%} of training, the predictions on {k} fixed samples " \
               f"moved by {d.late_jitter:.3g}{unit} per record (median)"
        if classification:
            seen += (f" and {d.late_flip_rate:.1%} of them flipped class per record to or from a confident one "
                     f"(limit {self.max_flip_rate:.1%})")
        seen += f"; {d.undone_jitter:.3g}{unit} per record went back and forth (limit {self.max_jitter:.3g}), " \
                f"{d.back_and_forth:.0%} of their movement undone"
        jumpy, high = d.jumpy, d.moving
        if jumpy:
            self.report(
                trainer,
                "warn",
                f"{seen}: the predictions keep jumping back and forth instead of settling",
                values,
                f"{lr_text[0].upper()}{lr_text[1:]} is probably too high: lower it (e.g. 3-10x) or decay it, "
                f"and look at the heat map {self.tag('heatmap')}",
            )
        else:
            verdict = "they still move, but steadily (still learning), not back and forth" if high else "they settle"
            self.report(trainer, "pass", f"{seen}: {verdict}", values)

    # ----------------------------------------------------------------- state
    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        previous = self._previous
        state.update(
            {
                "sample_x": self.sample_x,
                "sample_y": self.sample_y,
                "sample_indices": self.sample_indices,
                "task": self._task or "",
                **self.history.state(),
                "previous_tracked": None if previous is None else previous.tracked.cpu(),
                "previous_classes": None if previous is None or previous.classes is None else previous.classes.cpu(),
                "previous_confident": None if previous is None or previous.confident is None
                else previous.confident.cpu(),
                "nonfinite_step": self._nonfinite_step,
            }
        )
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._reset()
        self.sample_x = state_dict.get("sample_x")
        self.sample_y = state_dict.get("sample_y")
        self.sample_indices = state_dict.get("sample_indices")
        task = state_dict.get("task", "")
        self._task = task if task in TASKS else None
        if self._task == "regression" and self.sample_y is not None:
            self._scale = target_scale(self.sample_y)
        self.history.load(state_dict)
        tracked = state_dict.get("previous_tracked")
        if isinstance(tracked, torch.Tensor):
            self._previous = Snapshot(
                tracked,
                state_dict.get("previous_classes"),
                torch.zeros(0),
                math.nan,
                state_dict.get("previous_confident"),
            )
        self._nonfinite_step = int(state_dict.get("nonfinite_step", -1))

