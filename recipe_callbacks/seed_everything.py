"""SeedEverything (recipe step 2a, fix random seed): seed, fingerprint the start, and make resume exact."""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from lightning.fabric.utilities.seed import max_seed_value, min_seed_value, pl_worker_init_function
from lightning.pytorch import seed_everything
from torch.nn.parameter import is_lazy
from torch.utils.data import DataLoader
from typing_extensions import override

from recipe_callbacks.core.fingerprints import fingerprint_batch, fingerprint_scalar, fingerprint_tensors
from recipe_callbacks.core.rng_state import capture_rng_states, restore_rng_states
from recipe_callbacks.plumbing.callback_base import RecipeCallback
from recipe_callbacks.plumbing.finding import OnFail
from recipe_callbacks.plumbing.validation import check_bool, check_int

if TYPE_CHECKING:
    import lightning.pytorch as pl

_COMPARE = (
    "To compare two runs, put their logs side by side in TensorBoard and read the scalars "
    "recipe.seed_everything/weights_fingerprint and recipe.seed_everything/batch_fingerprint (or the "
    "text recipe.seed_everything/fingerprints, or the values in recipe_report.json): the same seed must "
    "give the same two numbers. A different weights fingerprint means the model was not built from the "
    "seeded generator (built before seeding, or something drew random numbers in between); a different "
    "batch fingerprint means the data order or augmentation is not seeded (a sampler or worker_init_fn "
    "with its own generator, or files listed in a different order)."
)


def _dataloaders(obj: Any) -> list[DataLoader[Any]]:
    """Every ``DataLoader`` in what ``trainer.train_dataloader`` returns (one, or a collection)."""
    if isinstance(obj, DataLoader):
        return [obj]
    if isinstance(obj, Mapping):
        return [dl for v in obj.values() for dl in _dataloaders(v)]
    if isinstance(obj, (list, tuple)):
        return [dl for v in obj for dl in _dataloaders(v)]
    return []


def weights_fingerprint(module: torch.nn.Module) -> str:
    """Fingerprint of a module's ``state_dict`` (parameters and buffers, in its own order); lazy
    parameters that do not exist yet and non-tensor extra state are left out."""
    named = [(k, v) for k, v in module.state_dict().items() if isinstance(v, torch.Tensor) and not is_lazy(v)]
    return fingerprint_tensors(named)


def _is_lightning_worker_init(fn: Any) -> bool:
    return isinstance(fn, functools.partial) and fn.func is pl_worker_init_function


# The seed this module set last (as PL_GLOBAL_SEED holds it), to tell the user's seeding from its own.
_own_seed: list[str | None] = [None]


class SeedEverything(RecipeCallback):
    """Fix the random seed (recipe step 2a), show that two runs start the same, and resume exactly.

    Seeds Python, NumPy and torch with Lightning's ``seed_everything`` when it is constructed (so a
    model built after it is seeded) and again at the start of fit. Fingerprints the initial weights
    and the first training batch (a SHA-256 of their bytes, 16 hex digits): two runs with the same
    seed must show the same fingerprints. With ``save_rng_state`` the RNG states go into checkpoints
    and come back on resume, so a resumed run sees the same batch order and dropout masks as an
    uninterrupted one (Lightning alone re-draws them from whatever state the new process has).

    This callback changes training on purpose: it seeds the generators (and, with
    ``deterministic=True``, switches torch to deterministic algorithms for the fit).

    Warns when it can tell the model was built before seeding: in a single-process run, when not
    one random number was drawn from torch's generator between this callback's construction and
    the start of fit, the model's random weights cannot come from the seeded stream. (When numbers
    were drawn in between, it cannot tell, and says nothing.) Warns when a training DataLoader has
    its own ``worker_init_fn``, which Lightning's per-worker seeding (``workers=True``) then does not
    replace.

    Args:
        seed: the seed, an int in ``[0, 2**32 - 1]``. ``None`` (the presets' choice) keeps a seed the
            user set before (``lightning.pytorch.seed_everything``, LightningCLI's
            ``seed_everything``) and does not re-seed at all, so the run is exactly the user's; a
            ``PL_GLOBAL_SEED`` variable that nothing seeded torch with yet is the seed it seeds with;
            without either it seeds with 0.
        workers: let Lightning seed every DataLoader worker differently and reproducibly (it adds
            ``pl_worker_init_function`` to loaders without a ``worker_init_fn``).
        deterministic: switch on ``torch.use_deterministic_algorithms`` (and turn off the cuDNN
            benchmark) from ``setup`` to ``teardown``; the earlier settings are put back after.
        save_rng_state: keep the RNG states of Python, NumPy, torch and CUDA (where present) in
            checkpoints and restore them on resume.
        on_fail: ``"warn"``, ``"raise"`` or ``"ignore"``; this check only ever warns.

    Raises:
        ValueError: ``seed`` outside ``[0, 2**32 - 1]``, or ``on_fail`` not a known choice.
        TypeError: a flag that is not a bool, or a seed that is not an int.

    Logged:
        - ``recipe.seed_everything/finding``: text, the Finding with the seed, ``workers`` and
          ``deterministic`` (0/1, torch's setting at the start of fit) and the first 24 bits of the
          initial weights' and the first batch's fingerprints (one-time values: no scalar charts).
        - ``recipe.seed_everything/fingerprints``: text with the seed, the settings and both full
          fingerprints.

    Example::

        seeder = SeedEverything(seed=42)  # first, before the model is built
        model = MyModel()
        Trainer(callbacks=[seeder, RecipeReport()]).fit(model, ckpt_path=...)
    """

    one_off = True

    def __init__(
        self,
        seed: int | None = None,
        workers: bool = True,
        deterministic: bool = False,
        save_rng_state: bool = True,
        on_fail: OnFail = "warn",
    ) -> None:
        super().__init__(on_fail=on_fail)
        # seed=None respects a seed the user already set (lightning's seed_everything, LightningCLI's
        # --seed_everything, PL_GLOBAL_SEED): no re-seeding, so the run is the user's own.
        # A PL_GLOBAL_SEED set in the environment that nobody seeded torch with is the seed to use.
        user_seed = os.environ.get("PL_GLOBAL_SEED", "") if seed is None else ""
        theirs = user_seed.isdigit() and user_seed != _own_seed[0]
        self.user_seeded = theirs and torch.initial_seed() == int(user_seed)
        if seed is None:
            seed = int(user_seed) if theirs else 0
        self.seed = check_int("SeedEverything", "seed", seed, minimum=min_seed_value)
        if self.seed > max_seed_value:
            raise ValueError(
                f"SeedEverything(seed={seed!r}): seed must be an int in [{min_seed_value}, {max_seed_value}]"
            )
        self.workers = check_bool("SeedEverything", "workers", workers)
        self.deterministic = check_bool("SeedEverything", "deterministic", deterministic)
        self.save_rng_state = check_bool("SeedEverything", "save_rng_state", save_rng_state)
        self.weights_fingerprint = ""
        self.batch_fingerprint = ""
        self._pending_rng: dict[str, Any] | None = None
        self._batch_pending = False
        self._saved_flags: tuple[bool, bool, bool] | None = None
        if not self.user_seeded:
            self._seed()
        # What the construction-time seeding left behind, to tell later whether the model drew from it.
        self._seeded_pid = os.getpid()
        self._seeded_torch_state = fingerprint_tensors([("torch", torch.get_rng_state())])

    def _seed(self) -> None:
        seed_everything(self.seed, workers=self.workers, verbose=False)
        _own_seed[0] = str(self.seed)

    # ----------------------------------------------------------------- determinism for the fit
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.gate_sharded(trainer)
        if not self.deterministic or self._saved_flags is not None:
            return
        self._saved_flags = (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.benchmark,
        )
        # cuBLAS needs a fixed workspace to be deterministic (CUDA >= 10.2); harmless on the CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._saved_flags is not None:
            enabled, warn_only, benchmark = self._saved_flags
            torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
            torch.backends.cudnn.benchmark = benchmark
            self._saved_flags = None

    # ----------------------------------------------------------------- seeding and fingerprints
    def _built_before_seeding(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> bool:
        """True when torch's generator is still exactly where construction-time seeding left it.

        Only judged in the process that constructed the callback and with one process in all:
        distributed strategies re-seed every process before any hook runs, which would look the same.
        """
        if trainer.world_size > 1 or os.getpid() != self._seeded_pid:
            return False
        if not any(p.is_floating_point() for p in pl_module.parameters() if not is_lazy(p)):
            return False
        return fingerprint_tensors([("torch", torch.get_rng_state())]) == self._seeded_torch_state

    def _settings(self) -> dict[str, float]:
        return {
            "seed": float(self.seed),
            "workers": float(self.workers),
            "deterministic": float(torch.are_deterministic_algorithms_enabled()),
            "cost_steps": 0.0,
        }

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._batch_pending = False
        if self._pending_rng is not None:
            # load_state_dict ran before this hook: keep the restored states, do not re-seed.
            restored = restore_rng_states(self._pending_rng)
            self._pending_rng = None
            self._report_resume(trainer, restored)
            return
        if trainer.ckpt_path is not None:  # resumed from a checkpoint without RNG states
            seed_everything(self.seed, workers=self.workers, verbose=False)
            self._report_resume(trainer, [])
            return
        if trainer.global_step > 0:  # a further fit() of the same Trainer: let the streams run on
            return
        built_before = not self.user_seeded and self._built_before_seeding(trainer, pl_module)
        if not self.user_seeded:
            self._seed()
        self.weights_fingerprint = weights_fingerprint(pl_module)
        self.batch_fingerprint = ""
        self._batch_pending = True
        self._report_fingerprints(trainer)
        if built_before:
            self.report(
                trainer,
                "warn",
                "the model was most likely built before seeding: not one random number was drawn from "
                f"torch's generator between SeedEverything(seed={self.seed}) and the start of fit, so the "
                "model's random initial weights were not drawn from the seeded generator",
                {},
                "construct SeedEverything before the model (with LightningCLI, use --seed_everything), or "
                "call lightning.pytorch.seed_everything before building it; ignore this if the weights "
                "were loaded from a file or seeded by you",
                key="built_before_seeding",
            )

    def _report_fingerprints(self, trainer: pl.Trainer) -> None:
        values = {**self._settings(), "weights_fingerprint": fingerprint_scalar(self.weights_fingerprint)}
        batch = "the first batch is not seen yet"
        if self.batch_fingerprint:
            values["batch_fingerprint"] = fingerprint_scalar(self.batch_fingerprint)
            batch = f"first batch {self.batch_fingerprint}"
        det = "on" if values["deterministic"] else "off"
        self.report(
            trainer,
            "pass",
            (f"seeded with {self.seed} by you before the Trainer (PL_GLOBAL_SEED); not re-seeded "
             if self.user_seeded else f"seeded with {self.seed} ")
            + f"(workers={self.workers}, deterministic algorithms {det}); "
            f"fingerprints: initial weights {self.weights_fingerprint}, {batch}. This callback changes "
            "training on purpose: it seeds Python, NumPy and torch at construction and at fit start",
            values,
            _COMPARE,
        )

    def _report_resume(self, trainer: pl.Trainer, restored: list[str]) -> None:
        values = self._settings()
        if self.weights_fingerprint:
            values["weights_fingerprint"] = fingerprint_scalar(self.weights_fingerprint)
        if self.batch_fingerprint:
            values["batch_fingerprint"] = fingerprint_scalar(self.batch_fingerprint)
        original = (
            f" Fingerprints of the original run: initial weights {self.weights_fingerprint or '?'}, "
            f"first batch {self.batch_fingerprint or '?'}."
        )
        if restored:
            status, summary, advice = "pass", (
                f"resumed from a checkpoint: RNG states of {', '.join(restored)} restored from it, so batch "
                "order and random masks continue as in an uninterrupted run. This callback changes "
                "training on purpose (it sets the generators)." + original
            ), _COMPARE
        elif not self.save_rng_state:
            status, summary, advice = "pass", (
                f"resumed from a checkpoint and re-seeded with {self.seed} (save_rng_state=False): the "
                "batch order after the resume differs from an uninterrupted run." + original
            ), "set save_rng_state=True to continue the random streams exactly on resume"
        else:
            status, summary, advice = "warn", (
                f"resumed from a checkpoint that holds no RNG state of SeedEverything; re-seeded with "
                f"{self.seed}, so the batch order after the resume differs from an uninterrupted run"
            ), "resume from a checkpoint saved with SeedEverything(save_rng_state=True) on the Trainer"
        self.report(trainer, status, summary, values, advice, key="", log_values=False)  # type: ignore[arg-type]

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._pending_rng = None
        if not self.workers:
            return
        loaders = _dataloaders(trainer.train_dataloader)
        own = [dl for dl in loaders if dl.worker_init_fn and not _is_lightning_worker_init(dl.worker_init_fn)]
        if not own:
            return
        fn = own[0].worker_init_fn
        name = getattr(fn, "__qualname__", None) or type(fn).__name__
        workers = max(dl.num_workers for dl in own)
        now = "" if workers else " (num_workers=0 now, so it takes effect once workers are used)"
        self.report(
            trainer,
            "warn",
            f"{len(own)} training DataLoader(s) have their own worker_init_fn ({name}); Lightning's worker "
            f"seeding (workers=True) does not replace it, so the workers' random streams are whatever "
            f"that function makes them{now}",
            {"user_worker_init_fns": float(len(own))},
            "drop the worker_init_fn to let Lightning seed each worker from the seed, or seed "
            "python/numpy/torch inside it from torch.initial_seed()",
            key="worker_init_fn",
        )

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._batch_pending:
            return
        self._batch_pending = False
        self.batch_fingerprint = fingerprint_batch(batch)
        self._report_fingerprints(trainer)
        self.log_text(trainer, "fingerprints", self._fingerprint_text())
        self.finish_early()

    def _fingerprint_text(self) -> str:
        rows = [
            ("seed", str(self.seed)),
            ("workers", str(self.workers)),
            ("deterministic algorithms", str(torch.are_deterministic_algorithms_enabled())),
            ("initial weights fingerprint", f"`{self.weights_fingerprint}`"),
            ("first batch fingerprint", f"`{self.batch_fingerprint}`"),
        ]
        table = "\n".join(f"| {k} | {v} |" for k, v in rows)
        return f"| setting | value |\n|---|---|\n{table}\n\n{_COMPARE}\n"

    # ----------------------------------------------------------------- checkpoints
    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            seed=self.seed, weights_fingerprint=self.weights_fingerprint, batch_fingerprint=self.batch_fingerprint
        )
        if self.save_rng_state:
            state["rng_states"] = capture_rng_states()
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.weights_fingerprint = str(state_dict.get("weights_fingerprint", ""))
        self.batch_fingerprint = str(state_dict.get("batch_fingerprint", ""))
        states = state_dict.get("rng_states")
        if self.save_rng_state and isinstance(states, dict):
            # Restored now and again at fit start (Lightning calls this before on_fit_start, and the
            # train DataLoader draws its first permutation only after on_fit_start).
            restore_rng_states(states)
            self._pending_rng = states
