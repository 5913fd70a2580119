"""FirstLayerFilterViz: recipe step 4, the first layer's weights as pictures and a noise score."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn
from typing_extensions import override

from recipe_callbacks.core.filter_noise import (
    FilterVerdict,
    bank_from_linear,
    bank_noise_score,
    filter_tiles,
    judge_filters,
    learned_change,
    noise_score_chart,
    weights_figure,
)
from recipe_callbacks.core.module_hooks import first_entered
from recipe_callbacks.core.pictures import image_grid
from recipe_callbacks.core.skip import CheckSkipped
from recipe_callbacks.plumbing.batch import BatchResolutionError, BatchToXY, ForwardFn, resolve_batch
from recipe_callbacks.plumbing.callback_base import RecipeCallback
from recipe_callbacks.plumbing.finding import OnFail, Status
from recipe_callbacks.plumbing.observe import observing
from recipe_callbacks.plumbing.validation import check_float, check_int, check_optional_str

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from matplotlib.figure import Figure

_OWNER = "FirstLayerFilterViz"
_MAX_SCORES = 1000  # points kept for the noise-score chart
FILTER_LAYERS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
# Layers that may come first but have no filters over the input; seeing one first is a skip.
NON_FILTER_LAYERS: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag)


class FirstLayerFilterViz(RecipeCallback):
    """Draws the weights of the layer that first sees the input, and scores how noise-like they are.

    The layer is the first ``Conv1d/2d/3d`` or ``Linear`` entered in forward order: on the first
    training batch the model runs once (eval mode, no grad, isolated RNG) with pre-forward hooks
    on the candidate layers, stopped as soon as one is entered; the hooks are then removed. An
    ``Embedding`` entered first means there are no filters to draw (a ``skip`` Finding).
    ``layer`` names the module instead.

    Its weights are drawn at the start, every ``every_n_epochs`` epochs and at the end of
    training: a filter over 3 input channels as one colour tile, other channel counts as one grey
    tile per channel (one filter per row), each tile scaled to its own min..max; a ``Linear`` over
    an image as one tile per output unit, reshaped to the image. The **noise score** of the bank
    (:mod:`recipe_callbacks.core.filter_noise`: mean squared difference of neighbouring weights
    over twice their variance) is about 1 for random, i.i.d. weights and far lower for smooth,
    structured filters. At the end a score still above ``noise_threshold`` is judged by evidence, not
    by the step count: random init scores about 1 for as long as it dominates the weights, so

    - weights exactly as initialised after optimizer steps: ``warn`` (frozen, no gradient, lr 0);
    - weights moved by less than ``min_weight_change`` times the norm of their init: ``skip``, too
      little training to expect structure (a short or ``fast_dev_run`` run); the values give the
      move and the noise score of the learned change ``W - W0``;
    - weights moved that far and what training added is itself noise-like: ``warn``;
    - weights moved that far and the learned change is smooth: ``skip``, structure is emerging but
      the init still shows (train longer to see it).

    Cost: on the first batch, one forward pass cut short at the first layer; then only a copy of
    that layer's weights, a score and a picture once every ``every_n_epochs`` epochs. Nothing
    runs on ordinary training steps.

    Args:
        every_n_epochs: draw and score the filters every this many training epochs.
        layer: the name of the module to draw (as in ``model.named_modules()``), instead of the
            first ``Conv``/``Linear`` found.
        image_shape: the shape of one input sample, e.g. ``[1, 28, 28]``, for a ``Linear`` first
            layer over flattened images (inferred from the batch when it is not flat).
        noise_threshold: the noise score at the end of training above which the filters are
            flagged as noise-like (i.i.d. noise scores about 1; 5x5 Gabor-like filters about 0.5).
        min_kernel_size: kernels with fewer spatial elements than this (e.g. 3x3 = 9 < 16) are
            drawn and scored but not judged: small kernels are high-pass by nature.
        min_weight_change: judge noise-like filters only once ``||W - W0|| / ||W0||`` (the weights'
            move from their value at the start of training) reached this; below it the random
            init still dominates the picture whatever training does.
        max_filters: draw at most this many filters.
        on_fail: see :class:`~recipe_callbacks.plumbing.callback_base.RecipeCallback`.
        input_key: where the input is in a batch; inferred when ``None``.
        target_key: where the target is in a batch; inferred when ``None``.
        batch_to_xy: a function ``batch -> (x, y)`` for other batch shapes.
        forward_fn: how to run the model the way your step does (a method name or a function
            ``(pl_module, batch) -> output``); see :class:`~recipe_callbacks.RecipeCallback`.

    Raises:
        ValueError: for an argument out of range.
        TypeError: for an argument of the wrong type.

    Logged:
        - ``recipe.first_layer_filter_viz/filters`` (image): the filter grid, exact pixels (a
          figure of the weight matrix with a colour bar for a ``Linear`` over plain feature vectors).
        - ``recipe.first_layer_filter_viz/noise_score``: the bank's noise score at each drawing.
        - ``recipe.first_layer_filter_viz/noise_score_chart`` (figure): the noise score over the
          drawings against ``noise_threshold`` (the structured band shaded).
        - At the end: a Finding with ``final_noise_score``, ``initial_noise_score``,
          ``noise_threshold``, ``weight_change`` (``||W - W0|| / ||W0||``), ``change_noise_score``
          (the noise score of ``W - W0``) and ``optimizer_steps`` (text
          ``recipe.first_layer_filter_viz/finding``).

    Example::

        trainer = Trainer(callbacks=[FirstLayerFilterViz(every_n_epochs=1)])
    """

    sharded_reason: ClassVar[str] = "each rank holds only a shard of the first layer's weights"

    def __init__(
        self,
        every_n_epochs: int = 1,
        layer: str | None = None,
        image_shape: list[int] | None = None,
        noise_threshold: float = 0.8,
        min_kernel_size: int = 16,
        min_weight_change: float = 1.0,
        max_filters: int = 64,
        on_fail: OnFail = "warn",
        input_key: str | None = None,
        target_key: str | None = None,
        batch_to_xy: BatchToXY | None = None,
        forward_fn: ForwardFn | str | None = None,
    ) -> None:
        super().__init__(on_fail, input_key, target_key, batch_to_xy, forward_fn)
        self.every_n_epochs = check_int(_OWNER, "every_n_epochs", every_n_epochs)
        self.layer = check_optional_str(_OWNER, "layer", layer)
        if image_shape is not None:
            if not isinstance(image_shape, (list, tuple)) or not 2 <= len(image_shape) <= 4:
                raise TypeError(f"{_OWNER}(image_shape={image_shape!r}): image_shape must be None or 2-4 ints")
            image_shape = [check_int(_OWNER, "image_shape", s) for s in image_shape]
        self.image_shape = image_shape
        self.noise_threshold = check_float(_OWNER, "noise_threshold", noise_threshold, maximum=2.0)
        self.min_kernel_size = check_int(_OWNER, "min_kernel_size", min_kernel_size, minimum=2)
        self.min_weight_change = check_float(_OWNER, "min_weight_change", min_weight_change)
        self.max_filters = check_int(_OWNER, "max_filters", max_filters)
        self._initial_weight: torch.Tensor | None = None  # W0: a CPU float64 copy at the first drawing
        self.layer_name: str | None = None
        self.initial_noise_score = math.nan
        self._module: nn.Module | None = None
        self._input_shape: tuple[int, ...] | None = None
        self._searched = False
        self._last_drawn_step = -1
        self.last_noise_score = math.nan
        self._scores: list[tuple[int, float]] = []  # (global step, noise score) of the drawn pictures

    # ----------------------------------------------------------------- hooks
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._searched, self._module, self._last_drawn_step, self._scores = False, None, -1, []
        if not self.is_resumed(trainer):  # a fresh run: W0 is this run's init
            self._initial_weight, self.initial_noise_score = None, math.nan

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._searched:
            return
        self._searched = True
        if self._find_layer(trainer, pl_module, batch):
            score = self._draw(trainer)
            if math.isnan(self.initial_noise_score):
                self.initial_noise_score = score
            if self._initial_weight is None or self._initial_weight.shape != self._weight().shape:
                self._initial_weight = self._weight()

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._module is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._draw(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._module is not None:
            self._draw(trainer)
            self._judge(trainer)

    # ----------------------------------------------------------------- finding the layer
    def _find_layer(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> bool:
        if self.layer is not None:
            return self._named_layer(trainer, pl_module, batch, self.layer)
        resolved = self.resolve(trainer, batch)
        if resolved is None:
            return False
        self._input_shape = tuple(resolved.x.shape[1:])
        precision = trainer.precision_plugin

        def run() -> None:
            x = precision.convert_input(resolved.x)
            with observing(pl_module), precision.val_step_context():
                self.run_model(pl_module, batch, resolved, x if resolved.with_input is not None else None)

        try:
            first = first_entered(pl_module, FILTER_LAYERS + NON_FILTER_LAYERS, run)
        except Exception as err:  # the user's training must go on
            raise CheckSkipped(f"the forward pass to find the first layer failed ({err!r}); name the layer, or "
                               "give forward_fn", "layer") from err
        if first is None:
            raise CheckSkipped("no Conv1d/2d/3d or Linear layer ran on the input", "layer")
        module = pl_module.get_submodule(first)
        if isinstance(module, NON_FILTER_LAYERS):
            raise CheckSkipped(f"the first layer, {first!r}, is an {type(module).__name__}: its rows are learned "
                               "vectors looked up by index, not filters over the input, so there is nothing to draw",
                               "layer")
        self.layer_name, self._module = first, module
        return True

    def _named_layer(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, name: str) -> bool:
        try:
            module = pl_module.get_submodule(name)
        except AttributeError:
            names = [n for n, m in pl_module.named_modules() if isinstance(m, FILTER_LAYERS)][:8]
            raise CheckSkipped(f"the model has no module named {name!r} (Conv/Linear modules: {names})",
                               "layer") from None
        if not isinstance(module, FILTER_LAYERS):
            raise CheckSkipped(f"{name!r} is a {type(module).__name__}, not a Conv1d/2d/3d or Linear", "layer")
        try:
            x = resolve_batch(batch, self.input_key, self.target_key, self.batch_to_xy).x
            self._input_shape = tuple(x.shape[1:])
        except BatchResolutionError:
            self._input_shape = None
        self.layer_name, self._module = name, module
        return True

    # ----------------------------------------------------------------- drawing and scoring
    def _weight(self) -> torch.Tensor:
        """A float64 CPU copy of the layer's weight."""
        weight = getattr(self._module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise RuntimeError(f"{_OWNER}: layer {self.layer_name!r} has no weight tensor")
        return weight.detach().to("cpu", torch.float64)

    def filter_bank(self, weight: torch.Tensor | None = None) -> torch.Tensor | None:
        """The layer's weight (or ``weight`` of its shape) as ``(O, C, *spatial)`` float64 on the
        CPU, or ``None`` for a ``Linear`` over inputs without a spatial layout."""
        if self._module is None:
            return None
        weight = self._weight() if weight is None else weight
        if isinstance(self._module, nn.Linear):
            shape = self.image_shape if self.image_shape is not None else self._input_shape
            return bank_from_linear(weight, shape) if shape is not None else None
        return weight

    def _draw(self, trainer: pl.Trainer) -> float:
        """Log the picture and the score (once per step); returns the score (NaN if none)."""
        step = int(trainer.global_step)
        if step == self._last_drawn_step:
            return self.last_noise_score
        self._last_drawn_step = step
        bank = self.filter_bank()
        score = math.nan
        if bank is not None and any(s > 1 for s in bank.shape[2:]):
            score = bank_noise_score(bank)
            self.log_scalars(trainer, {"noise_score": score})
        self.last_noise_score = score
        if trainer.is_global_zero:
            if bank is None:
                self.log_figure(trainer, "filters", weights_figure, self._weight()[: self.max_filters],
                                self.layer_name or "")
            else:
                tiles, ncols = filter_tiles(bank, self.max_filters)
                self.log_figure(trainer, "filters", image_grid, tiles, ncols=ncols)
            if math.isfinite(score):
                self._scores = [*self._scores[-(_MAX_SCORES - 1):], (step, score)]
                self.log_figure(trainer, "noise_score_chart", noise_score_chart, list(self._scores),
                                self.layer_name or "", self.noise_threshold)
        return score

    def picture(self, bank: torch.Tensor | None = None) -> np.ndarray | Figure:
        """The filters (of ``bank``, or the layer's) as an exact ``(H, W, 3)`` uint8 grid, one tile per
        filter and channel; a first layer without a spatial layout as a weight-matrix figure."""
        bank = self.filter_bank() if bank is None else bank
        if bank is None:
            return weights_figure(self._weight()[: self.max_filters], self.layer_name or "")
        tiles, ncols = filter_tiles(bank, self.max_filters)
        return image_grid(tiles, ncols=ncols)

    def _judge(self, trainer: pl.Trainer) -> None:
        bank = self.filter_bank()
        name = self.layer_name
        if bank is None:
            features = self._weight().shape[1]
            raise CheckSkipped(f"the first layer {name!r} is a Linear over {features} plain features: no spatial "
                               "layout to judge its weights by (the weight matrix is drawn as a heat map)",
                               "image_shape")
        kernel = tuple(bank.shape[2:])
        score, steps = self.last_noise_score, int(trainer.global_step)
        change, change_score = learned_change(self._weight(), self._initial_weight, self.filter_bank)
        values = {"final_noise_score": score, "initial_noise_score": self.initial_noise_score,
                  "noise_threshold": self.noise_threshold, "weight_change": change,
                  "change_noise_score": change_score, "optimizer_steps": steps}
        verdict = judge_filters(score, math.prod(kernel), steps, change, change_score,
                                threshold=self.noise_threshold, min_kernel_size=self.min_kernel_size,
                                min_change=self.min_weight_change)
        shape_text = f"{bank.shape[0]} filters of {bank.shape[1]} channel(s) x {'x'.join(map(str, kernel))}"
        seen = (
            f"first layer {name!r} ({shape_text}): noise score {score:.2f} at the end of training "
            f"(start {self.initial_noise_score:.2f}; i.i.d. noise ~1, smooth filters far lower)"
        )
        status, summary, advice = self._verdict_text(verdict, seen, math.prod(kernel), steps, change, change_score)
        self.report(trainer, status, summary, values, advice)

    def _verdict_text(
        self, verdict: FilterVerdict, seen: str, size: int, steps: int, change: float, change_score: float
    ) -> tuple[Status, str, str]:
        """Status, summary and advice of each verdict of :func:`~recipe_callbacks.core.filter_noise.judge_filters`."""
        moved = f"after {steps} optimizer step(s) the weights moved {change:.2f} x the norm of their init"
        picture = f"look at the picture {self.tag('filters')}"
        above = f"{seen}, above {self.noise_threshold:.2f}: the filters still look like noise"
        texts: dict[FilterVerdict, tuple[Status, str, str]] = {
            "small_kernel": ("skip", f"{seen}; kernels of {size} weights are too small to tell noise from edges",
                             f"{picture}; set {self.check_name}(min_kernel_size=...) to judge anyway"),
            "structured": ("pass", f"{seen}: the filters have structure", ""),
            "frozen": ("warn", f"{above}, and the first layer never changed from its random init in {steps} optimizer "
                       "step(s)",
                       "the first layer has not learned: check that its parameters require grad and are in the "
                       "optimizer, and the learning rate (0 or far too low leaves them at init); " + picture),
            "too_little_training": (
                "skip", f"{seen}; too little training to expect structure: {moved} (structure can show from "
                f"{self.min_weight_change:g} x), so the picture still shows mostly the random init",
                f"train longer to judge the filters ({picture}); if the run was long, the first layer learns too "
                f"slowly (see UpdateRatioMonitor); set {self.check_name}(min_weight_change=...) to judge earlier",
            ),
            "noisy": (
                "warn", f"{above}; {moved} and what training added is itself noise-like (its noise score "
                f"{change_score:.2f})",
                "the first layer has not learned structure: check the learning rate (too high keeps filters "
                f"noisy), normalise the inputs, add data augmentation or weight decay; {picture}",
            ),
            "emerging": (
                "skip", f"{seen}; {moved} and what training added is smooth (its noise score {change_score:.2f}): "
                "structure is emerging, but the random init still shows",
                f"train longer to judge the filters ({picture}); set {self.check_name}(noise_threshold=...) to "
                "judge the current filters anyway",
            ),
        }
        return texts[verdict]

    # ----------------------------------------------------------------- state
    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update({"initial_noise_score": self.initial_noise_score, "layer_name": self.layer_name or ""})
        if self._initial_weight is not None:
            state["initial_weight"] = self._initial_weight
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.initial_noise_score = float(state_dict.get("initial_noise_score", math.nan))
        initial = state_dict.get("initial_weight")
        self._initial_weight = initial.detach().to("cpu", torch.float64) if isinstance(initial, torch.Tensor) else None
