"""DistributedConsistencyCheck (recipe step 2a at scale): under DDP, are the ranks in step, and does
every rank see different data?"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.strategies import DDPStrategy
from torch.utils.data import DistributedSampler, IterableDataset
from typing_extensions import override

from recipe_callbacks.core.data_stats import first_dataloader
from recipe_callbacks.core.rank_checksums import (
    MISSING,
    checksums,
    differing_columns,
    equal_groups,
    ranks_unlike_first,
    tensor_checksum,
)
from recipe_callbacks.core.skip import CheckSkipped
from recipe_callbacks.plumbing.batch import BatchResolutionError, BatchToXY, resolve_batch
from recipe_callbacks.plumbing.callback_base import RecipeCallback
from recipe_callbacks.plumbing.finding import OnFail
from recipe_callbacks.plumbing.validation import check_int

if TYPE_CHECKING:
    import lightning.pytorch as pl

_KEY_PARAMS, _KEY_DATA = "parameters", "data"


def _sampler_of(loader: Any) -> Any:
    batch_sampler = getattr(loader, "batch_sampler", None)
    inner = getattr(batch_sampler, "sampler", None)
    return inner if inner is not None else getattr(loader, "sampler", None)


class DistributedConsistencyCheck(RecipeCallback):
    """Under DDP: parameters identical on every rank, and different data on every rank (recipe 2a at scale).

    A checksum of every parameter (the sum of its bit patterns, exact and independent of reduction
    order) is gathered from all ranks after setup, after each of the first ``first_steps``
    optimizer steps and then every ``every_n_steps`` steps: DDP keeps replicas bit-identical, so
    any difference is a bug (a hand-written update, EMA or clipping on one rank only, a parameter
    changed outside the optimizer, a rank-dependent branch); the Finding names the first drifting
    parameters and ranks. The first training batch of every rank is checksummed the same way: the
    same batch on several ranks means the data is not sharded (an ``IterableDataset`` that does not
    split itself by rank, a custom sampler, ``Trainer(use_distributed_sampler=False)``), so each
    step trains on one batch ``world_size`` times. The effective batch size (per-rank batch sizes
    summed, times ``accumulate_grad_batches``) is reported.

    It runs on every rank (the gathers are collectives) and logs on rank 0. Every rank takes part
    in every gather, even one that could not compute its own checksum, and every verdict is made
    from the gathered table, so all ranks decide alike: with ``on_fail="raise"`` all of them raise
    together and none waits for the others. In a single process it reports a ``skip`` saying so;
    under other strategies (FSDP, DeepSpeed: sharded parameters differ by design) a ``skip``
    naming the strategy.

    Args:
        first_steps: the optimizer steps after which the parameters are compared (1, 2, ..., this).
        every_n_steps: after those, compare every this many optimizer steps.
        on_fail: ``"warn"``, ``"raise"`` (on every rank at once) or ``"ignore"``.
        input_key: where the input is in a batch (a dict key or a position); inferred when ``None``.
        target_key: where the target is in a batch; inferred when ``None``.
        batch_to_xy: a function ``batch -> (x, y)`` that replaces both.

    Raises:
        ValueError: a step count below 1 (``first_steps`` below 0), or an unknown ``on_fail``.
        TypeError: a step count that is not an int.

    Logged:
        - ``recipe.distributed_consistency_check/first_batches``: text, each rank's first-batch input
          checksum and batch size, and the effective batch size.
        - ``recipe.distributed_consistency_check/drifting_parameters``: text, when ranks drift: the
          parameters and the ranks unlike rank 0.
        - the Findings ``parameters`` (``world_size``, ``checks``, ``last_checked_step``,
          ``drifting_parameters``) and ``data`` (``world_size``, ``effective_batch_size``,
          ``per_rank_batch_size``, ``ranks_with_same_batch``), in the report; no charts (the values
          are one-time).

    Cost:
        0 training steps. On a checked step: one integer-sum kernel per parameter and one gather of
        one int64 per parameter (a host-device synchronisation); nothing on the other steps. With
        the defaults, 4 checks in the first 3 steps, then one per 200 steps.

    Example::

        Trainer(strategy="ddp", devices=2, callbacks=[DistributedConsistencyCheck(), RecipeReport()])
    """

    def __init__(
        self,
        first_steps: int = 3,
        every_n_steps: int = 200,
        on_fail: OnFail = "warn",
        input_key: str | None = None,
        target_key: str | None = None,
        batch_to_xy: BatchToXY | None = None,
    ) -> None:
        super().__init__(on_fail, input_key, target_key, batch_to_xy)
        owner = "DistributedConsistencyCheck"
        self.first_steps = check_int(owner, "first_steps", first_steps, minimum=0)
        self.every_n_steps = check_int(owner, "every_n_steps", every_n_steps)
        self._active = False
        self._batch_checked = False
        self._drifted = False
        self._checks = 0
        self._last_step = -1

    # ----------------------------------------------------------------- hooks
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._active, self._batch_checked, self._drifted = False, False, False
        self._checks, self._last_step = 0, -1
        self.idle = True  # its step hooks wait for a check that runs (below)
        if trainer.world_size < 2:
            raise CheckSkipped(f"a single process (world_size={trainer.world_size}): no ranks to compare; this check "
                               "runs under DDP with several processes", key=_KEY_PARAMS)
        if not isinstance(trainer.strategy, DDPStrategy) or "DeepSpeed" in type(trainer.strategy).__name__:
            raise CheckSkipped(f"strategy {type(trainer.strategy).__name__} shards or places parameters differently on "
                               "each rank; the check compares full replicas under DDP only", key=_KEY_PARAMS)
        self._active, self.idle = True, False
        self._check_parameters(trainer, pl_module, "after setup")

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._active and not self._batch_checked:
            self._batch_checked = True
            self._check_batch(trainer, pl_module, batch)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = int(trainer.global_step)
        if not self._active or self._drifted or step == self._last_step:
            return
        if 0 < step <= self.first_steps or step % self.every_n_steps == 0:
            self._check_parameters(trainer, pl_module, f"after optimizer step {step}")

    # ----------------------------------------------------------------- parameters
    def _check_parameters(self, trainer: pl.Trainer, pl_module: pl.LightningModule, when: str) -> None:
        names = [name for name, _ in pl_module.named_parameters()]
        device = pl_module.device
        try:
            local = checksums(p for _, p in pl_module.named_parameters()).to(device)
        except Exception:  # never leave the other ranks waiting in the gather
            local = torch.full((len(names),), MISSING, dtype=torch.int64, device=device)
        gathered = trainer.strategy.all_gather(local).reshape(trainer.world_size, -1).cpu()
        self._last_step = int(trainer.global_step)
        self._checks += 1
        values = {
            "world_size": float(trainer.world_size),
            "checks": float(self._checks),
            "last_checked_step": float(trainer.global_step),
            "cost_steps": 0.0,
        }
        missing = sorted({int(r) for r in (gathered == MISSING).any(dim=1).nonzero().flatten().tolist()})
        if missing:
            raise CheckSkipped(f"rank(s) {missing} could not checksum their parameters {when}", key=_KEY_PARAMS)
        drift = differing_columns(gathered)
        if not drift:
            self.report(
                trainer,
                "pass",
                f"parameters ({len(names)} tensors) bit-identical on all {trainer.world_size} ranks at "
                f"{self._checks} checks (setup, the first optimizer steps, then every {self.every_n_steps}); last "
                f"{when}",
                values,
                key=_KEY_PARAMS,
                log_values=False,
            )
            return
        self._drifted = True
        values["drifting_parameters"] = float(len(drift))
        rows = "".join(f"| {names[c]} | {ranks_unlike_first(gathered, c)} |\n" for c in drift[:50])
        self.log_text(
            trainer, "drifting_parameters", f"{when}\n\n| parameter | ranks unlike rank 0 |\n|---|---|\n{rows}"
        )
        shown = ", ".join(f"{names[c]} (ranks {ranks_unlike_first(gathered, c)} differ from rank 0)" for c in drift[:5])
        more = f" and {len(drift) - 5} more" if len(drift) > 5 else ""
        self.report(
            trainer,
            "fail",
            f"the ranks drifted apart {when}: {len(drift)} of {len(names)} parameters differ between ranks: "
            f"{shown}{more}. DDP keeps replicas identical, so something changed them outside the synchronised "
            "gradient step",
            values,
            "Look for code that changes parameters on some ranks only: an update, EMA, clipping or re-initialisation "
            "inside `if self.global_rank == 0` / `if trainer.is_global_zero`, a parameter changed in a hook or in "
            "training_step under torch.no_grad(), or a rank-dependent branch; do it on every rank, or broadcast "
            "the result from rank 0.",
            key=_KEY_PARAMS,
            log_values=False,
        )

    # ----------------------------------------------------------------- data
    def _first_batches(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any
    ) -> tuple[list[int], list[int]]:
        """The input checksum and the batch size of every rank's first batch (every rank takes part).

        Raises:
            CheckSkipped: a rank could not find the input in its batch.
        """
        device = pl_module.device
        local = torch.tensor([MISSING, -1], dtype=torch.int64, device=device)
        try:
            x = resolve_batch(batch, self.input_key, self.target_key, self.batch_to_xy).x
            size = int(x.shape[0]) if x.ndim else 1
            local = torch.stack([tensor_checksum(x).to(device), torch.tensor(size, device=device)])
        except (BatchResolutionError, Exception):  # every rank still takes part in the gather
            pass
        gathered = trainer.strategy.all_gather(local).reshape(trainer.world_size, 2).cpu()
        sums, sizes = gathered[:, 0].tolist(), gathered[:, 1].tolist()
        missing = [r for r, s in enumerate(sums) if s == MISSING]
        if missing:
            raise CheckSkipped(f"rank(s) {missing} could not find the input in their first batch", "input_key",
                               key=_KEY_DATA)
        return sums, sizes

    def _check_batch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any) -> None:
        sums, sizes = self._first_batches(trainer, pl_module, batch)
        effective = int(sum(sizes)) * int(trainer.accumulate_grad_batches)
        values = {
            "world_size": float(trainer.world_size),
            "effective_batch_size": float(effective),
            "per_rank_batch_size": float(sizes[0]),
            "cost_steps": 0.0,
        }
        batch_text = (
            f"effective batch size {effective} ({' + '.join(str(int(s)) for s in sizes)} per rank"
            + (f", x {trainer.accumulate_grad_batches} accumulated" if trainer.accumulate_grad_batches > 1 else "")
            + ")"
        )
        groups = equal_groups([int(s) for s in sums])
        table = "".join(f"| {r} | {int(sums[r]):x} | {int(sizes[r])} |\n" for r in range(len(sums)))
        self.log_text(
            trainer, "first_batches", f"{batch_text}\n\n| rank | input checksum | batch size |\n|---|---|---|\n{table}"
        )
        if not groups:
            self.report(
                trainer,
                "pass",
                f"the first training batch differs on every one of the {trainer.world_size} ranks (the data is "
                f"sharded); {batch_text}",
                values,
                key=_KEY_DATA,
                log_values=False,
            )
            return
        values["ranks_with_same_batch"] = float(sum(len(g) for g in groups))
        self.report(
            trainer,
            "fail",
            f"ranks {groups[0]} got the same first training batch: the data is not sharded, so every step trains "
            f"on one batch {len(groups[0])} times; {self._cause(trainer)}; {batch_text}",
            values,
            "Shard the data: leave Trainer(use_distributed_sampler=True) (the default) with a map-style dataset, "
            "wrap a custom sampler for DDP (e.g. a DistributedSampler over its indices), or make an IterableDataset "
            "split its stream by torch.distributed.get_rank() / get_world_size().",
            key=_KEY_DATA,
            log_values=False,
        )

    @staticmethod
    def _cause(trainer: pl.Trainer) -> str:
        loader = first_dataloader(trainer.train_dataloader)
        if loader is None:
            return "the training data is not a DataLoader"
        if isinstance(loader.dataset, IterableDataset):
            return f"the dataset is an IterableDataset ({type(loader.dataset).__name__}), which Lightning cannot shard"
        sampler = _sampler_of(loader)
        if not isinstance(sampler, DistributedSampler):
            return (
                f"the sampler is a {type(sampler).__name__}, not a DistributedSampler (a custom sampler, or "
                "Trainer(use_distributed_sampler=False))"
            )
        return "a DistributedSampler is in place, so the samples themselves repeat (duplicated data on each rank?)"
