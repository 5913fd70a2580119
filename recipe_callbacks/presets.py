"""Presets: the recipe switched on in one line, in code, from LightningCLI, or with ``RECIPE_PRESET``.

``skeleton``
    Recipe stage 2, "set up the end-to-end training/evaluation skeleton": every sanity check at the
    start of training (seed, data, inputs, loss at init, baselines, overfit one batch, batch
    independence, loss decrease, LR schedule, gradient flow, eval mode, loss compatibility) plus the cheap
    monitors. Sets ``deterministic=True``.
``monitor``
    Only what is cheap enough to leave on for a long run: the exact full-set evaluation, the
    prediction dynamics, first-layer filters, update ratios, the LR curve (``stage="final"``), the
    loss-decrease watch, and the two first-step checks that cost a small fraction of one step
    (gradient flow, loss compatibility).
``full``
    Everything, including ``CausalityCheck`` for sequence models.

Every preset ends with :class:`~recipe_callbacks.RecipeReport`.

Example:
    >>> names()
    ['full', 'monitor', 'skeleton']
    >>> [type(cb).__name__ for cb in callbacks("monitor")][-1]
    'RecipeReport'
"""

from __future__ import annotations

import inspect
import os
from typing import TYPE_CHECKING, Any, Literal

from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from typing_extensions import override

from recipe_callbacks.plumbing.finding import RecipeWarning
from recipe_callbacks.plumbing.hook_dispatch import switch_off, unused_hooks

if TYPE_CHECKING:
    import lightning.pytorch as pl

PresetName = Literal["skeleton", "monitor", "full"]
ENVIRONMENT_VARIABLE = "RECIPE_PRESET"

# Member callbacks of each preset, in the order they run, with the arguments the preset gives them.
_MEMBERS: dict[str, tuple[tuple[str, dict[str, Any]], ...]] = {
    "skeleton": (
        ("SeedEverything", {}),
        ("DataInspector", {}),
        ("InputVisualizer", {}),
        ("InitLossCheck", {}),
        ("BatchIndependenceCheck", {}),
        ("InputIndependentBaseline", {}),
        ("OverfitOneBatch", {}),
        ("LossDecreaseCheck", {}),
        ("NoLRDecayWarning", {"stage": "early"}),
        ("FullEvalSet", {}),
        ("UpdateRatioMonitor", {}),
        ("GradientFlowCheck", {}),
        ("EvalModeCheck", {}),
        ("LossCompatibilityCheck", {}),
        ("LeakageCheck", {}),
        ("DistributedConsistencyCheck", {}),
    ),
    "monitor": (
        ("FullEvalSet", {}),
        ("LossDecreaseCheck", {}),
        ("NoLRDecayWarning", {"stage": "final"}),
        ("PredictionDynamicsLogger", {}),
        ("FirstLayerFilterViz", {}),
        ("UpdateRatioMonitor", {}),
        ("GradientFlowCheck", {}),
        ("LossCompatibilityCheck", {}),
        ("DistributedConsistencyCheck", {}),
    ),
    "full": (
        ("SeedEverything", {}),
        ("DataInspector", {}),
        ("InputVisualizer", {}),
        ("InitLossCheck", {}),
        ("BatchIndependenceCheck", {}),
        ("CausalityCheck", {}),
        ("InputIndependentBaseline", {}),
        ("OverfitOneBatch", {}),
        ("LossDecreaseCheck", {}),
        ("NoLRDecayWarning", {"stage": "early"}),
        ("FullEvalSet", {}),
        ("PredictionDynamicsLogger", {}),
        ("FirstLayerFilterViz", {}),
        ("UpdateRatioMonitor", {}),
        ("GradientFlowCheck", {}),
        ("EvalModeCheck", {}),
        ("LossCompatibilityCheck", {}),
        ("LeakageCheck", {}),
        ("DistributedConsistencyCheck", {}),
    ),
}
_TRAINER_FLAGS: dict[str, dict[str, Any]] = {
    "skeleton": {"deterministic": True},
    "monitor": {},
    "full": {"deterministic": True},
}


def names() -> list[str]:
    """The preset names, sorted."""
    return sorted(_MEMBERS)


def _check_name(name: str) -> str:
    if name not in _MEMBERS:
        raise ValueError(f"unknown recipe preset {name!r}; the presets are {names()}")
    return name


def _callback_class(class_name: str) -> type[Callback]:
    import recipe_callbacks

    cls: type[Callback] = getattr(recipe_callbacks, class_name)
    return cls


# Argument names that mean different things in different members: a preset-wide value goes only to
# the member whose meaning the README documents for the preset (InitLossCheck's relative band);
# give the others theirs through a class override, e.g. ``LeakageCheck={"tolerance": 0.1}``.
_PRESET_WIDE_ONLY: dict[str, tuple[str, ...]] = {"tolerance": ("InitLossCheck",)}


def _accepts(cls: type[Callback], argument: str) -> bool:
    owners = _PRESET_WIDE_ONLY.get(argument)
    if owners is not None and cls.__name__ not in owners:
        return False
    params = inspect.signature(cls.__init__).parameters
    return argument in params and params[argument].kind is not inspect.Parameter.VAR_KEYWORD


def callbacks(name: str, **overrides: Any) -> list[Callback]:
    """The callbacks of preset ``name``, ending with a ``RecipeReport``.

    Args:
        name: ``"skeleton"``, ``"monitor"`` or ``"full"``.
        **overrides: either an argument name, given to every member that takes it
            (``every_n_steps=10``, ``on_fail="raise"``, ``seed=3``), or a class name with a dict of
            arguments for that member only (``InitLossCheck={"tolerance": 0.2}``).

    Raises:
        ValueError: for an unknown preset name (listing the names) or an override that no member
            takes.

    Example:
        >>> cbs = callbacks("monitor", every_n_steps=25, NoLRDecayWarning={"stage": "early"})
        >>> [cb.stage for cb in cbs if type(cb).__name__ == "NoLRDecayWarning"]
        ['early']
        >>> callbacks("fast")
        Traceback (most recent call last):
        ...
        ValueError: unknown recipe preset 'fast'; the presets are ['full', 'monitor', 'skeleton']
    """
    from recipe_callbacks.recipe_report import RecipeReport

    members = _MEMBERS[_check_name(name)]
    classes = {class_name: _callback_class(class_name) for class_name, _ in members}
    used: set[str] = set()
    built: list[Callback] = []
    for class_name, preset_args in members:
        cls = classes[class_name]
        kwargs = dict(preset_args)
        for key, value in overrides.items():
            if key == class_name:
                if not isinstance(value, dict):
                    raise ValueError(f"callbacks({name!r}, {key}={value!r}): a class override must be a dict")
                kwargs.update(value)
                used.add(key)
            elif key not in classes and _accepts(cls, key):
                kwargs[key] = value
                used.add(key)
        built.append(cls(**kwargs))
    unused = sorted(set(overrides) - used)
    if unused:
        raise ValueError(
            f"callbacks({name!r}): no member of the preset takes {unused}; members: {[m for m, _ in members]}"
        )
    built.append(RecipeReport())
    return built


def trainer_kwargs(name: str, **overrides: Any) -> dict[str, Any]:
    """``Trainer`` keyword arguments for preset ``name``: its callbacks and the flags it wants.

    Example:
        >>> kwargs = trainer_kwargs("skeleton")
        >>> kwargs["deterministic"], type(kwargs["callbacks"][-1]).__name__
        (True, 'RecipeReport')
    """
    return {"callbacks": callbacks(name, **overrides), **_TRAINER_FLAGS[_check_name(name)]}


class RecipePreset(Callback):
    """A whole preset as one callback, for LightningCLI and the ``RECIPE_PRESET`` variable.

    At ``setup`` it adds the preset's callbacks to the Trainer, right after itself, leaving out
    every class the user already passed (so there is never a second copy of a stateful callback).
    Lightning calls the ``setup`` of the added callbacks in the same pass.

    Args:
        name: ``"skeleton"``, ``"monitor"`` or ``"full"``.

    Raises:
        ValueError: for an unknown preset name.

    Example::

        # one flag on the command line of a LightningCLI script
        python train.py fit --trainer.callbacks+=recipe_callbacks.presets.RecipePreset
        # or in its YAML config
        trainer:
          callbacks: [{class_path: recipe_callbacks.presets.RecipePreset, init_args: {name: skeleton}}]
    """

    def __init__(self, name: PresetName = "skeleton") -> None:
        if name not in _MEMBERS:
            raise ValueError(f"RecipePreset(name={name!r}): name must be one of {names()}")
        self.name = name
        self.added: list[Callback] = []
        switch_off(self, unused_hooks(type(self)))  # only setup does anything

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.added:
            return
        present = {type(cb) for cb in trainer.callbacks}  # type: ignore[attr-defined]
        self.added = [cb for cb in callbacks(self.name) if type(cb) not in present]
        position = trainer.callbacks.index(self) + 1  # type: ignore[attr-defined]
        trainer.callbacks[position:position] = self.added  # type: ignore[attr-defined]


def callbacks_from_environment() -> list[Callback]:
    """Lightning's ``callbacks_factory`` entry point: a :class:`RecipePreset` when ``RECIPE_PRESET``
    names a preset, nothing when the variable is unset or empty, and a warning (not a crash) for an
    unknown name."""
    name = os.environ.get(ENVIRONMENT_VARIABLE, "").strip()
    if not name:
        return []
    if name not in _MEMBERS:
        rank_zero_warn(
            f"{ENVIRONMENT_VARIABLE}={name!r} is not a recipe preset; the presets are {names()}. "
            "No recipe callbacks were added.",
            category=RecipeWarning,
        )
        return []
    return [RecipePreset(name)]  # type: ignore[arg-type]


def callbacks_for_pytorch_lightning() -> list[Callback]:
    """The ``pytorch_lightning.callbacks_factory`` entry point: the same as
    :func:`callbacks_from_environment`, for users who write ``import pytorch_lightning as pl``
    (a ``pytorch_lightning.Trainer`` calls the recipe callbacks' hooks as ``lightning.pytorch``'s
    does)."""
    return callbacks_from_environment()
