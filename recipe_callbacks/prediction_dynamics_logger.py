"""PredictionDynamicsLogger: recipe step 2k, the model's predictions on a fixed batch over training."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from typing_extensions import override

from recipe_callbacks.core import prediction_jitter as core
from recipe_callbacks.core.pictures import image_grid, matrix_chart
from recipe_callbacks.core.short_training import learning_rates
from recipe_callbacks.core.skip import CheckSkipped
from recipe_callbacks.core.task import TASKS, Task, aligned, logits_of
from recipe_callbacks.plumbing.batch import BatchToXY, ForwardFn, ResolvedBatch, integer_inputs, resolve_batch
from recipe_callbacks.plumbing.callback_base import RecipeCallback
from recipe_callbacks.plumbing.finding import OnFail
from recipe_callbacks.plumbing.loaders import fixed_samples
from recipe_callbacks.plumbing.observe import observing
from recipe_callbacks.plumbing.validation import check_choice, check_float, check_indices, check_int

if TYPE_CHECKING:
    import lightning.pytorch as pl

_OWNER = "PredictionDynamicsLogger"


class PredictionDynamicsLogger(RecipeCallback):
    """Records the model's predictions on a fixed set of validation samples every few steps.

    The samples (the first ``num_samples`` of the validation dataset, or ``indices``) are chosen once
    and kept in the ``state_dict``, so a resumed run watches the same ones. Every ``every_n_steps``
    optimizer steps the model predicts on them in eval mode, without gradients, under an isolated RNG
    (training is unchanged), and the **jitter** (mean change of the true-class probability, or of the
    regression prediction in target standard deviations) and the **flip rate** (class changes to or
    from a confident prediction) are logged (small outputs are summarised a few records at a time,
    each value at its own step: see ``HELD_RECORDS``). At the end a Finding warns of a learning rate too high
    when, after ``warmup_fraction`` of training, the predictions go back and forth: the undone
    movement per record is above ``max_jitter``, or the median flip rate is above ``max_flip_rate``
    with at least ``min_back_and_forth`` of the movement undone; steady movement (still learning)
    passes. The math is in :mod:`recipe_callbacks.core.prediction_jitter`; cost and memory are in
    the README ("The callbacks"): one eval forward of ``num_samples`` samples per record, nothing on
    the other steps.

    Args:
        num_samples: how many fixed samples to watch (the first ones of the dataset).
        every_n_steps: record every this many optimizer steps (and once at the start of training).
        indices: dataset indices of the samples to watch; overrides ``num_samples``.
        source: ``"val"`` (the validation dataloader) or ``"train"`` (for runs without validation).
        task: ``None``/``"auto"`` infers it as the other checks do; ``"multiclass"``, ``"binary"``,
            ``"regression"`` say it; ``"classification"`` says one of the first two.
        max_jitter: the undone movement per record after warm-up (probability or target standard
            deviations) above which the learning rate is flagged.
        max_flip_rate: the median flip rate after warm-up above which it is flagged.
        min_confidence: a class change is a flip only when the top probability was at least this
            fraction of the way from chance to certainty at one of the two records; 0: every change.
        warmup_fraction: the first part of training (of the steps seen) that is not judged.
        min_back_and_forth: a high flip rate is flagged only when at least this fraction of the way
            the predictions travelled after warm-up was undone.
        max_records: records kept; when full, every other one is dropped (bounded memory).
        pictures_every_n_records: log the heat map and the sample grid every this many records and
            at the end of training (a heat map is 0.1-0.2 s of matplotlib).
        on_fail: as for every :class:`~recipe_callbacks.RecipeCallback`.
        input_key: as for every check.
        target_key: as for every check.
        batch_to_xy: as for every check.
        forward_fn: as for every check.

    Raises:
        ValueError: for an argument out of range or not one of its choices.
        TypeError: for an argument of the wrong type.

    Logged (under ``recipe.prediction_dynamics_logger/``): the scalars ``jitter``, ``flip_rate``
    and ``fixed_batch_loss`` at every record; the figure ``heatmap`` (fixed samples x global steps)
    and the image ``samples`` (captioned ``y=<label> p=<prediction>``); the text ``finding`` at the end.

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
        self.indices = check_indices(_OWNER, "indices", indices)
        self.source: Literal["val", "train"] = check_choice(_OWNER, "source", source, ("val", "train"))
        # one meaning of ``task`` across the callbacks (a preset hands the same value to all)
        self.task: str | None = check_choice(_OWNER, "task", task, (None, "auto", "classification", *TASKS))
        if self.task == "auto":
            self.task = None
        self.max_jitter = check_float(_OWNER, "max_jitter", max_jitter)
        self.max_flip_rate = check_float(_OWNER, "max_flip_rate", max_flip_rate, maximum=1.0)
        self.min_confidence = check_float(_OWNER, "min_confidence", min_confidence, maximum=1.0, inclusive_minimum=True)
        self.warmup_fraction = check_float(_OWNER, "warmup_fraction", warmup_fraction, maximum=0.95,
                                           inclusive_minimum=True)
        self.min_back_and_forth = check_float(_OWNER, "min_back_and_forth", min_back_and_forth, maximum=1.0)
        self.max_records = check_int(_OWNER, "max_records", max_records, minimum=8)
        self.pictures_every_n_records = check_int(_OWNER, "pictures_every_n_records", pictures_every_n_records)
        self._state_key = self._generate_state_key(num_samples=self.num_samples, every_n_steps=self.every_n_steps)
        self._reset()

    def _reset(self) -> None:
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
        self.history = core.RecordHistory(self.max_records)
        self._previous: core.Snapshot | None = None
        self._nonfinite_step = -1
        self._records_since_picture = 0
        self._last_step = -1  # the global step of the latest record, summarised or not
        self._held: list[tuple[pl.Trainer, int, torch.Tensor]] = []  # records not yet summarised

    @property
    @override
    def state_key(self) -> str:
        # Lightning reads state_key around every hook call: built once
        return self._state_key

    # ----------------------------------------------------------------- hooks
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._disabled = True  # until the samples are chosen and recorded (a CheckSkipped leaves it so)
        if self.sample_x is None:
            self.sample_x, self.sample_y, self.sample_indices, self._sample_batch = fixed_samples(
                trainer, self.source, self.indices, self.num_samples, self.resolved
            )
        self._disabled = False
        if self._last_step != trainer.global_step:
            self._record(trainer, pl_module)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        counter = self._counter
        step = counter.completed if counter is not None else trainer.global_step
        if self._disabled or step % self.every_n_steps or self._last_step == step:
            return
        self._record(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._disabled:
            return
        if self._last_step >= 0 and self._last_step != trainer.global_step:
            self._record(trainer, pl_module)
        self._log_pictures(trainer)
        self._judge(trainer)

    # ----------------------------------------------------------------- one record
    def _predict(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> tuple[torch.Tensor, torch.Tensor]:
        """The outputs on the fixed samples and the targets they are scored on (:func:`aligned`)."""
        assert self.sample_x is not None and self.sample_y is not None
        if self._device_xy is None or self._device_xy[0].device != pl_module.device:  # the samples, once per device
            self._device_xy = (self.sample_x.to(pl_module.device), self.sample_y.to(pl_module.device))
        x, y = self._device_xy
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
            raise CheckSkipped(f"running the model on the fixed samples failed ({err!r})", "forward_fn") from err
        if output is None:
            raise CheckSkipped("the model did not return a tensor (or a dict/ModelOutput with 'logits')", "forward_fn")
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

    def _record(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._disabled = True  # until this record is done: a CheckSkipped stops the watch
        predicted = self._predict(trainer, pl_module)
        output = predicted[0].detach().float().cpu()  # one copy to the host per record; the rest is K-sized CPU work
        if self._host_y is None:
            self._host_y = predicted[1].detach().cpu()  # the targets once
        if self._task is None:
            try:
                self._task = core.check_task(self.task, output, self._host_y)
            except ValueError as err:
                raise CheckSkipped(f"cannot compare the predictions with the targets: {err}", "task") from err
            self._scale = core.target_scale(self._host_y) if self._task == "regression" else 1.0
        self._disabled = False
        step = self._last_step = int(trainer.global_step)
        self._held.append((trainer, step, output))
        if len(self._held) >= core.HELD_RECORDS or output.numel() > core.HELD_VALUES:
            self._summarise()
        self._records_since_picture += 1
        if self._records_since_picture >= self.pictures_every_n_records:
            self._log_pictures(trainer)

    def _summarise(self) -> None:
        """Summarise the held records in order (:func:`core.record`), keep them and log their values."""
        held, self._held = self._held, []
        assert (self._host_y is not None and self._task is not None) or not held
        for trainer, step, output in held:
            now = core.record(output, self._host_y, self._task, self._previous,  # type: ignore[arg-type]
                              min_confidence=self.min_confidence, scale=self._scale)
            if self._nonfinite_step < 0 and not now.finite:
                self._nonfinite_step = step
            self._previous = self.history.add_record(step, now)
            self.log_scalars(trainer, now.scalars(), step)

    def _summarised(self) -> core.RecordHistory:
        self._summarise()
        return self.history

    steps = property(lambda self: self._summarised().steps, doc="The global steps of the kept records (oldest first).")
    jitters = property(lambda self: self._summarised().jitters, doc="The jitter of each kept record (NaN first).")
    losses = property(lambda self: self._summarised().losses, doc="The fixed-batch loss of each kept record.")

    def heatmap_matrix(self) -> torch.Tensor:
        """``(K, R)``: one row per fixed sample, one column per kept record (oldest left)."""
        return self._summarised().heatmap_matrix()

    def _log_pictures(self, trainer: pl.Trainer) -> None:
        self._summarise()
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
        assert self.sample_y is not None
        shown = core.captions(self._previous, self.sample_y, classification)
        self.log_figure(trainer, "samples", image_grid, x.float(), captions=shown)

    def _learning_rate(self, trainer: pl.Trainer) -> float:
        rates = learning_rates(trainer.optimizers[0]) if trainer.optimizers else []
        return rates[0] if rates else math.nan

    def _judge(self, trainer: pl.Trainer) -> None:
        self._summarise()
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
        d = core.judge_dynamics(self.history, self.warmup_fraction, scale=self._scale, max_jitter=self.max_jitter,
                           max_flip_rate=self.max_flip_rate, min_back_and_forth=self.min_back_and_forth,
                           classification=classification)
        if d.late_records < 3:
            steps = self.history.steps[-1] if self.history.steps else 0
            raise CheckSkipped(f"only {d.late_records} records after the first {self.warmup_fraction:.0%} of training "
                               f"(every_n_steps={self.every_n_steps}, {steps} steps); need 3", "every_n_steps")
        values = d.values(max_jitter=self.max_jitter, max_flip_rate=self.max_flip_rate,
                          records=len(self.history.steps), learning_rate=lr, classification=classification)
        seen = d.describe(k, self.warmup_fraction, self.max_jitter, self.max_flip_rate, classification)
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
        self._summarise()
        state = super().state_dict()
        previous = self._previous.state() if self._previous is not None else dict.fromkeys(
            ("previous_tracked", "previous_classes", "previous_confident"))
        state.update({"sample_x": self.sample_x, "sample_y": self.sample_y, "sample_indices": self.sample_indices,
                      "task": self._task or "", **self.history.state(), **previous,
                      "nonfinite_step": self._nonfinite_step})
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
            self._scale = core.target_scale(self.sample_y)
        self.history.load(state_dict)
        self._previous = core.Snapshot.from_state(state_dict)
        self._nonfinite_step = int(state_dict.get("nonfinite_step", -1))
        self._last_step = self.history.steps[-1] if self.history.steps else -1

