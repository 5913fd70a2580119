"""UpdateRatioMonitor: how far each optimizer step moves each layer, and whether activations are alive.

Beyond Karpathy's post but in its spirit: ``log10(||update|| / ||weight||)`` per layer should sit near ``-3``
(far below, the layer does not learn; far above, updates overwhelm the weights), and a ReLU that outputs zero for
a whole batch, or a tanh pinned at +-1, passes no gradient. Both are measured on sampled steps only.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from typing_extensions import override

from recipe_callbacks.core import update_ratio as core
from recipe_callbacks.core.pictures import line_chart
from recipe_callbacks.plumbing.callback_base import RecipeCallback
from recipe_callbacks.plumbing.finding import OnFail, Status
from recipe_callbacks.plumbing.ranks import sum_over_ranks
from recipe_callbacks.plumbing.validation import check_bool, check_float, check_int

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from matplotlib.figure import Figure

_KINDS_TEXT = "nn.ReLU, ReLU6, Tanh, Sigmoid, Hardtanh, Hardsigmoid, GELU, SiLU or Softplus"


class UpdateRatioMonitor(RecipeCallback):
    """Logs update-to-weight ratios per layer and the share of dead or saturated activation units.

    On optimizer steps 0, 1, 2, 4, 8, ... (densely at the start, where a bad init shows) and then every
    ``every_n_steps`` steps it copies the parameters just before the optimizer step (``on_before_optimizer_step``,
    so with gradient accumulation it brackets the real step) and after the batch computes, per layer,
    ``log10(||w_after - w_before|| / ||w_before||)`` with all the layer's parameter tensors pooled. On the same
    steps it hooks every activation module (``nn.ReLU``, ``ReLU6``, ``Tanh``, ``Sigmoid``, ``Hardtanh``,
    ``Hardsigmoid``, ``GELU``, ``SiLU``, ``Softplus``) for one forward pass: a unit (a feature, or a channel of a
    conv map) is dead when it is inactive for every value in the batch (ReLU: exactly 0; tanh: ``|y| > 0.99``;
    sigmoid: within 0.01 of 0 or 1; GELU, SiLU, Softplus: an input so far left that less than 0.01 of the
    gradient passes, see :mod:`recipe_callbacks.core.update_ratio`). Between sampled steps nothing is hooked or
    copied: an unsampled step costs one flag per hook. It only reads: the run's weights stay bit-identical.

    A layer is flagged when its ratio stays below ``min_ratio`` (not learning: a frozen layer, a parameter
    missing from the optimizer, a vanishing gradient) or above ``max_ratio`` (exploding: learning rate too high)
    for ``patience`` samples in a row, and an activation layer when more than ``max_dead_fraction`` of its units
    stay dead for ``patience`` samples. Two Findings: key ``ratio`` (``fail`` when exploding, ``warn`` when not
    learning) and key ``activations`` (``warn``). They are reported when the set of flagged layers changes and at
    the end of training.

    Args:
        every_n_steps: measure on optimizer steps 0, 1, 2, 4, 8, ... below N, then N, 2N, 3N, ...
        min_ratio: a layer whose ratio stays below this is not learning.
        max_ratio: a layer whose ratio stays above this is exploding.
        patience: how many samples in a row a layer must be out of range to be flagged.
        max_dead_fraction: an activation layer with more dead units than this is flagged.
        activations: also measure activation health.
        unit_dim: the dimension of an activation output that indexes units (1: features of ``(N, D)``, channels
            of ``(N, C, H, W)``; use -1 for ``(N, T, D)`` sequence models).
        include_frozen: also measure parameters with ``requires_grad=False`` (they are then flagged as not
            learning; set ``False`` when freezing is intended, e.g. a fine-tuned backbone).
        history_size: samples kept per layer for the chart (older ones are dropped).
        plot_every_n_samples: draw the ratio chart every this many samples (and at the end).
        on_fail: what a ``fail`` Finding does: ``"warn"``, ``"raise"`` or ``"ignore"``.

    Raises:
        ValueError: an argument out of range, or ``min_ratio >= max_ratio``.
        TypeError: an argument of the wrong type.

    Logged:
        - ``recipe.update_ratio_monitor/<layer>/log10_ratio``: per layer (module name, e.g. ``net.0``; ``root``
          for parameters of the model itself), at each sampled step; an exact 0 update is logged as -12.
        - ``recipe.update_ratio_monitor/<activation>/dead_fraction``: per activation module call (``act``,
          ``act#2`` for a module called twice in one forward).
        - ``recipe.update_ratio_monitor/<activation>/saturated_fraction``: share of saturated values, for tanh,
          sigmoid, hardtanh and hardsigmoid.
        - ``recipe.update_ratio_monitor/ratio_chart``: figure of the ratio per layer over steps on a log axis,
          the healthy band around 1e-3 shaded, ``min_ratio`` and ``max_ratio`` drawn.
        - ``recipe.update_ratio_monitor/finding``: text, the Findings with their values.

    Example::

        trainer = Trainer(callbacks=[UpdateRatioMonitor(every_n_steps=100), RecipeReport()])
    """

    sharded_reason: ClassVar[str] = (
        "each rank holds only a shard of every parameter, so per-layer norms would be of the shard"
    )

    def __init__(
        self,
        every_n_steps: int = 100,
        min_ratio: float = 1e-5,
        max_ratio: float = 1e-1,
        patience: int = 3,
        max_dead_fraction: float = 0.5,
        activations: bool = True,
        unit_dim: int = 1,
        include_frozen: bool = True,
        history_size: int = 200,
        plot_every_n_samples: int = 100,
        on_fail: OnFail = "warn",
    ) -> None:
        super().__init__(on_fail=on_fail)
        owner = type(self).__name__
        self.every_n_steps = check_int(owner, "every_n_steps", every_n_steps)
        self.min_ratio = check_float(owner, "min_ratio", min_ratio)
        self.max_ratio = check_float(owner, "max_ratio", max_ratio)
        if self.min_ratio >= self.max_ratio:
            raise ValueError(f"{owner}(min_ratio={min_ratio!r}): min_ratio must be below max_ratio={max_ratio!r}")
        self.patience = check_int(owner, "patience", patience)
        self.max_dead_fraction = check_float(owner, "max_dead_fraction", max_dead_fraction, maximum=1.0)
        self.activations = check_bool(owner, "activations", activations)
        self.include_frozen = check_bool(owner, "include_frozen", include_frozen)
        self.unit_dim = check_int(owner, "unit_dim", unit_dim, minimum=-8)
        self.history_size = check_int(owner, "history_size", history_size, minimum=2)
        self.plot_every_n_samples = check_int(owner, "plot_every_n_samples", plot_every_n_samples)
        self._snapshot: core.ParameterSnapshot | None = None
        self._snapshot_step = self._armed_step = self._drawn_step = -1
        self._frozen_layers: set[str] = set()
        self._watch = core.ActivationWatch(self.unit_dim)
        self._due = True  # the batch started at a sampled step (or no batch started yet)
        self._resting, self._next_due = False, 0  # resting between samples: only on_train_batch_start is called
        self._manual = False  # manual optimisation steps the optimizer several times per batch
        self.ratio_steps: deque[int] = deque(maxlen=self.history_size)
        self.ratios: dict[str, deque[float]] = {}
        self.activation_steps: deque[int] = deque(maxlen=self.history_size)
        self.dead: dict[str, deque[float]] = {}
        self._signatures: dict[str, tuple[Any, ...]] = {}
        self._scalars: dict[int, dict[str, float]] = {}  # by step
        # Lightning reads state_key around every hook call (profiler names): build it once.
        self._state_key = self._generate_state_key(every_n_steps=self.every_n_steps)

    @property
    @override
    def state_key(self) -> str:
        return self._state_key

    def _hooks_off(self) -> set[str]:  # resting between samples: only on_train_batch_start is called
        off = super()._hooks_off()
        return off | {"on_before_optimizer_step", "on_train_batch_end"} if getattr(self, "_resting", False) else off

    # ----------------------------------------------------------------- hooks
    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        counter = self._counter
        step = counter.completed if counter is not None else trainer.global_step
        if self._resting and step < self._next_due:  # resting only under automatic optimization (below)
            return  # between samples: one comparison
        self._due = core.sampled_step(step, self.every_n_steps)
        self._manual = not pl_module.automatic_optimization
        self._next_due = core.next_sampled_step(step, self.every_n_steps)
        if self._resting != (not self._due and not self._manual):  # between samples: the other hooks not called
            self._resting = not self._resting
            self._refresh_hooks()
        if self._due and self.activations and step != self._armed_step:
            self._armed_step = step
            self._arm(trainer, pl_module)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self._due and not self._manual:  # an unsampled batch: one flag
            return
        step = trainer.global_step
        # Only the first call of a step: closure-based optimizers (LBFGS) may call this repeatedly.
        if core.sampled_step(step, self.every_n_steps) and self._snapshot is None and step != self._snapshot_step:
            self._snapshot_step = step
            self._take_snapshot(pl_module)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._snapshot is None and not self._watch.handles:  # an unsampled batch: nothing to measure
            return
        # What a sampled step measured (update norms, activation counts) reaches the host in one copy.
        due = self._snapshot is not None and trainer.global_step != self._snapshot_step
        norms = self._snapshot.norms() if due and self._snapshot is not None else None
        if self._watch.handles:
            self._watch.disarm()
            norms = self._record_activations(trainer, pl_module, norms)
        elif norms is not None:
            norms = norms.cpu()
        if norms is not None:
            self._record_ratios(trainer, norms)
        for step, values in self._scalars.items():  # what the step measured, in one write
            self.log_scalars(trainer, values, step=step)
        self._scalars = {}

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._watch.disarm()
        self._snapshot, self._next_due, self._resting = None, 0, False  # a next fit decides its first step afresh
        self._refresh_hooks()
        self._judge_ratios(trainer, final=True)
        if self.activations:
            self._judge_activations(trainer, final=True)
        self._draw(trainer)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._watch.disarm()
        self._snapshot, self._next_due, self._scalars = None, 0, {}  # a next fit starts afresh

    # ----------------------------------------------------------------- update ratios
    def _take_snapshot(self, pl_module: pl.LightningModule) -> None:
        named = [(n, p) for n, p in pl_module.named_parameters() if self.include_frozen or p.requires_grad]
        self._snapshot = core.ParameterSnapshot.take(named, self._snapshot_step)
        self._frozen_layers = self._snapshot.frozen_layers

    def _record_ratios(self, trainer: pl.Trainer, norms: torch.Tensor) -> None:
        assert self._snapshot is not None
        names, step, self._snapshot = self._snapshot.names, self._snapshot.step, None
        ratios = core.layer_log10_ratios(names, norms[0].tolist(), norms[1].tolist())
        if not ratios:
            return
        self.ratio_steps.append(step)
        core.push(self.ratios, ratios, len(self.ratio_steps), self.history_size)
        self._scalars.setdefault(step, {}).update({f"{layer}/log10_ratio": v for layer, v in ratios.items()})
        self._judge_ratios(trainer, final=False)
        if len(self.ratio_steps) % self.plot_every_n_samples == 0:
            self._draw(trainer)

    def _judge_ratios(self, trainer: pl.Trainer, *, final: bool) -> None:
        samples = len(self.ratio_steps)
        if samples < self.patience:
            self._too_few(trainer, "ratio", final, f"{samples} update ratio sample(s) in this run, fewer than "
                          f"patience={self.patience}; sampled at optimizer steps 0, 1, 2, 4, 8, ... and then every "
                          f"{self.every_n_steps}")
            return
        low_log, high_log = math.log10(self.min_ratio), math.log10(self.max_ratio)
        verdict = core.judge_histories(self.ratios, low_log, high_log, self.patience)
        low, high = verdict.low, verdict.high
        values = {"layers": float(verdict.series), "not_learning_layers": float(len(low)),
                  "exploding_layers": float(len(high)), "min_log10_ratio": verdict.lowest,
                  "max_log10_ratio": verdict.highest, "samples": float(samples)}
        status: Status = "fail" if high else "warn" if low else "pass"
        if not core.changed(self._signatures, "ratio", (status, tuple(sorted(low)), tuple(sorted(high))), final):
            return
        summary, advice = self._ratio_prose(low, high, verdict.series, values)
        self.report(trainer, status, summary, values, advice, key="ratio", log_values=False)

    def _ratio_prose(
        self, low: dict[str, float], high: dict[str, float], layers: int, values: dict[str, float]
    ) -> tuple[str, str]:
        """The summary and advice of the ``ratio`` Finding."""
        low_log, high_log = math.log10(self.min_ratio), math.log10(self.max_ratio)
        window = f"for the last {self.patience} samples (steps 0, 1, 2, 4, ..., then every {self.every_n_steps})"
        parts, advice = [], []
        if high:
            parts.append(f"{len(high)} of {layers} layers exploding: log10(update/weight) stayed above {high_log:.1f} "
                         f"{window}: {core.summarize_layers(high)}")
            advice.append("lower the learning rate (a ratio near 1e-3 is healthy), clip gradients, or check the init "
                          "and normalisation of these layers")
        if low:
            frozen = sorted(set(low) & self._frozen_layers)
            note = f" (requires_grad=False: {', '.join(frozen[:5])})" if frozen else ""
            parts.append(f"{len(low)} of {layers} layers not learning: log10(update/weight) stayed below "
                         f"{low_log:.1f} {window}: {core.summarize_layers(low)}{note}")
            advice.append("for layers that should train: check requires_grad, that their parameters are in the "
                          "optimizer, the learning rate (too low, or 0), and vanishing gradients (dead or saturated "
                          "activations before them); -12 means nothing moved. If the freeze is intended, set "
                          "UpdateRatioMonitor(include_frozen=False)")
        if not parts:
            parts.append(f"update-to-weight ratios of all {layers} layers within [{self.min_ratio:g}, "
                         f"{self.max_ratio:g}] (log10 from {values['min_log10_ratio']:.1f} to "
                         f"{values['max_log10_ratio']:.1f}; about -3 is healthy)")
        return "; ".join(parts), "; ".join(advice)

    # ----------------------------------------------------------------- activations
    def _arm(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._watch.arm(pl_module) and "activations" not in self._findings:
            self.skip(trainer, f"no {_KINDS_TEXT} module in the model, so no activation health (activations called "
                      "as functions, e.g. F.relu, are not seen); the update ratios are still measured", "activations",
                      key="activations")

    def _record_activations(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, carry: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Record the activation health of the sampled step; ``carry`` (a device tensor, the update
        norms) travels to the host in the same copy and comes back, on the CPU."""
        records = self._watch.take()
        if not records:
            return carry.cpu() if carry is not None else None
        # The counts and the update norms in one vector: one copy to the host, and one collective over
        # the processes (all ranks run the same sampled step).
        counts = core.flat_counts(records)
        parts = [counts] if carry is None else [counts, carry.reshape(-1).to(counts.device, torch.float64)]
        (flat,) = sum_over_ranks(trainer, [torch.cat(parts)])
        if carry is not None:
            flat, carry = flat[: counts.numel()], flat[counts.numel() :].reshape(carry.shape)
        dead, scalars = core.activation_fractions(records, flat)
        self.activation_steps.append(self._armed_step)
        core.push(self.dead, dead, len(self.activation_steps), self.history_size)
        self._scalars.setdefault(self._armed_step, {}).update(scalars)  # written with the ratios: one event
        self._judge_activations(trainer, final=False)
        return carry

    def _judge_activations(self, trainer: pl.Trainer, *, final: bool) -> None:
        samples = len(self.activation_steps)
        if samples < self.patience:
            reason = f"{samples} activation sample(s) in this run, fewer than patience={self.patience}"
            self._too_few(trainer, "activations", final, reason)
            return
        verdict = core.judge_histories(self.dead, -1.0, self.max_dead_fraction, self.patience)
        dead = verdict.high
        values = {"activation_layers": float(verdict.series), "dead_layers": float(len(dead)),
                  "max_dead_fraction": verdict.highest, "samples": float(samples)}
        status: Status = "warn" if dead else "pass"
        if not core.changed(self._signatures, "activations", (status, tuple(sorted(dead))), final):
            return
        if dead:
            summary = (f"{len(dead)} of {verdict.series} activation layers have mostly dead units (more than "
                       f"{self.max_dead_fraction:.0%} of units inactive on the whole batch for the last "
                       f"{self.patience} samples; dead fraction in brackets): {core.summarize_layers(dead)}")
            advice = ("dead ReLUs come from a large negative bias, a bad init or a learning rate that pushed the "
                      "units off: lower the learning rate, check the init, normalise before the activation, or try "
                      "LeakyReLU/GELU; saturated tanh/sigmoid: scale the init or the inputs down")
        else:
            summary = (f"no activation layer with mostly dead units (activation layers checked: {verdict.series}; "
                       f"largest dead fraction {values['max_dead_fraction']:.0%})")
            advice = ""
        self.report(trainer, status, summary, values, advice, key="activations", log_values=False)

    def _too_few(self, trainer: pl.Trainer, key: str, final: bool, reason: str) -> None:
        """At the end of training, a skip for the Finding ``key`` that never had enough samples."""
        if final and key not in self._findings:
            self.skip(trainer, reason, "every_n_steps", key=key)

    # ----------------------------------------------------------------- picture and state
    def _draw(self, trainer: pl.Trainer) -> None:
        if trainer.is_global_zero and self.ratio_steps and self.ratio_steps[-1] != self._drawn_step:
            self._drawn_step = step = self.ratio_steps[-1]
            self.log_figure(trainer, "ratio_chart", line_chart, step=step, **self._ratio_chart())

    def ratio_chart(self) -> Figure:
        """The update/weight ratio of every layer over the sampled steps, against the healthy band."""
        return line_chart(**self._ratio_chart())

    def _ratio_chart(self) -> dict[str, Any]:  # the arguments of line_chart
        return core.ratio_chart_arguments(self.ratios, list(self.ratio_steps), self.min_ratio, self.max_ratio)

    @override
    def state_dict(self) -> dict[str, Any]:
        series = {"ratios": self.ratios, "dead": self.dead}
        return {**super().state_dict(), "ratio_steps": list(self.ratio_steps),
                "activation_steps": list(self.activation_steps),
                **{name: {k: list(v) for k, v in s.items()} for name, s in series.items()}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.ratio_steps, self.ratios = core.history_from_state(state_dict, "ratio", self.history_size)
        self.activation_steps, self.dead = core.history_from_state(state_dict, "activation", self.history_size)
