"""What a run must record so that two runs can be compared later (recipe steps 2a and 3b).

``RecipeReport`` keeps one :class:`RunRecord` and writes :meth:`RunRecord.to_dict` as the ``"run"``
section of ``recipe_report.json``: the package version, the seed, the fingerprints of the initial
weights and of the first batch, whether deterministic algorithms were on, the hyperparameters, the
optimizers' settings, a few Trainer settings and the training loss of every batch. The
``recipe-callbacks compare`` command reads it back.

The losses are kept as detached tensors and read to the host only when the report is written, so
recording them costs no host-device synchronisation on a training step.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from recipe_callbacks.plumbing.observe import loss_from_step_output

if TYPE_CHECKING:
    import lightning.pytorch as pl

# Version of the "run" section's layout; the command refuses a report of another format.
RUN_FORMAT = 1
# The training losses of at most this many batches are kept (nothing grows without bound).
MAX_LOSSES = 20_000


def _json_value(value: Any) -> Any:
    """A JSON-ready primitive for a hyperparameter value (containers and objects become their repr)."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return _json_value(value.item())
    return repr(value)


def flatten_hparams(hparams: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested hyperparameters as one flat ``{"a.b": value}`` dict of JSON primitives.

    Example:
        >>> flatten_hparams({"lr": 0.1, "net": {"width": 8, "act": None}})
        {'lr': 0.1, 'net.width': 8, 'net.act': None}
    """
    out: dict[str, Any] = {}
    for key, value in hparams.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_hparams(value, f"{name}."))
        else:
            out[name] = _json_value(value)
    return out


def _optimizer_settings(trainer: pl.Trainer) -> dict[str, Any]:
    """``{"optimizer.<i>.class": "Adam", "optimizer.<i>.lr": 3e-4, ...}`` of the first param group."""
    out: dict[str, Any] = {}
    for i, optimizer in enumerate(getattr(trainer, "optimizers", []) or []):
        out[f"optimizer.{i}.class"] = type(optimizer).__name__
        groups = getattr(optimizer, "param_groups", [])
        if groups:
            for key, value in groups[0].items():
                if key != "params":
                    out[f"optimizer.{i}.{key}"] = _json_value(value)
    return out


def _trainer_settings(trainer: pl.Trainer) -> dict[str, Any]:
    return {
        "trainer.max_epochs": trainer.max_epochs,
        "trainer.max_steps": trainer.max_steps,
        "trainer.accumulate_grad_batches": trainer.accumulate_grad_batches,
        "trainer.precision": str(trainer.precision),
        "trainer.world_size": trainer.world_size,
        "trainer.strategy": type(trainer.strategy).__name__,
        "trainer.gradient_clip_val": _json_value(trainer.gradient_clip_val),
    }


class RunRecord:
    """Collects what a later comparison of runs needs; owned by ``RecipeReport``.

    Example:
        >>> record = RunRecord()
        >>> record.to_dict(None)["format"]
        1
    """

    def __init__(self, max_losses: int = MAX_LOSSES) -> None:
        self.max_losses = max_losses
        self.start()

    def start(self, trainer: pl.Trainer | None = None) -> None:
        """Forget an earlier fit's record."""
        # the global step at the start of the next batch (optimizer steps done before it)
        self._step_at_start = 0 if trainer is None else int(trainer.global_step)
        self._pending: list[torch.Tensor] = []
        self._pending_steps: list[int] = []
        self._losses: list[float] = []
        self._steps: list[int] = []
        self._seen = 0
        self._kept = 0  # losses kept, read or not
        self._scale = 1
        self._dropped = 0
        self._deterministic: bool | None = None
        self._cudnn_benchmark: bool | None = None
        self._settings: dict[str, Any] = {}

    def record_batch(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, global_step: int | None = None
    ) -> None:
        """Keep this batch's training loss (a detached tensor; no synchronisation); ``global_step`` is
        ``trainer.global_step`` when the caller has it at hand."""
        if self._deterministic is None:
            # Read once the run is set up: SeedEverything / Trainer(deterministic=...) have acted by now.
            self._deterministic = torch.are_deterministic_algorithms_enabled()
            self._cudnn_benchmark = bool(torch.backends.cudnn.benchmark)
            self._settings = {**_optimizer_settings(trainer), **_trainer_settings(trainer)}
            # Lightning hands on_train_batch_end the loss divided by the accumulation factor.
            accumulate = trainer.accumulate_grad_batches
            self._scale = accumulate if pl_module.automatic_optimization and accumulate > 1 else 1
        self._seen += 1
        step, self._step_at_start = self._step_at_start, trainer.global_step if global_step is None else global_step
        if self._kept >= self.max_losses:
            self._dropped += 1
            return
        # Lightning hands on {"loss": tensor}: read at once (a cost of every training batch)
        loss = outputs.get("loss") if type(outputs) is dict else loss_from_step_output(outputs)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            return
        # kept as it is (Lightning's own detached copy): reshaped, scaled and read at the flush
        self._pending.append(loss if not loss.requires_grad else loss.detach())
        self._pending_steps.append(step)
        self._kept += 1

    def _flush(self) -> None:
        if self._pending:
            scale = self._scale
            losses = [t.reshape(()) if scale == 1 else t.reshape(()) * scale for t in self._pending]
            values = torch.stack([t.to(torch.float64) for t in losses]).cpu().tolist()
            self._losses.extend(float(v) for v in values)
            self._steps.extend(self._pending_steps)
            self._pending, self._pending_steps = [], []

    def to_dict(self, trainer: pl.Trainer | None) -> dict[str, Any]:
        """The ``"run"`` section of ``recipe_report.json``."""
        from recipe_callbacks import __version__

        self._flush()
        seeder = None
        callbacks: list[str] = []
        hparams: dict[str, Any] = {}
        if trainer is not None:
            for cb in trainer.callbacks:  # type: ignore[attr-defined]
                if type(cb).__name__ == "SeedEverything":
                    seeder = cb
            from recipe_callbacks.plumbing.callback_base import RecipeCallback

            callbacks = [
                cb.check_name
                for cb in trainer.callbacks  # type: ignore[attr-defined]
                if isinstance(cb, RecipeCallback)
            ]
            module = getattr(trainer, "lightning_module", None)
            if module is not None and hasattr(module, "hparams"):
                hparams.update(flatten_hparams(dict(module.hparams)))
            datamodule = getattr(trainer, "datamodule", None)
            if datamodule is not None and hasattr(datamodule, "hparams"):
                hparams.update(flatten_hparams(dict(datamodule.hparams), "datamodule."))
        seed: int | None = None
        fingerprints: dict[str, str] = {}
        if seeder is not None:
            seed = int(seeder.seed)
            if seeder.weights_fingerprint:
                fingerprints["weights"] = str(seeder.weights_fingerprint)
            if seeder.batch_fingerprint:
                fingerprints["batch"] = str(seeder.batch_fingerprint)
        elif os.environ.get("PL_GLOBAL_SEED", "").lstrip("-").isdigit():
            seed = int(os.environ["PL_GLOBAL_SEED"])
        deterministic = self._deterministic
        if deterministic is None:
            deterministic = torch.are_deterministic_algorithms_enabled()
        return {
            "format": RUN_FORMAT,
            "package_version": __version__,
            "seed": seed,
            "fingerprints": fingerprints,
            "deterministic": deterministic,
            "cudnn_benchmark": self._cudnn_benchmark,
            "callbacks": callbacks,
            "hparams": hparams,
            "settings": dict(self._settings),
            "global_step": None if trainer is None else int(trainer.global_step),
            "train_loss": {
                "source": "the loss training_step returned, every training batch (global rank 0); steps: optimizer "
                "steps done before the batch",
                "steps": list(self._steps),
                "values": list(self._losses),
                "batches_seen": self._seen,
                "truncated": self._dropped > 0,
            },
        }
