"""Shared test fixtures: tiny models and data, a fast Trainer, and TensorBoard event readers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override


class TinyClassifier(pl.LightningModule):
    """An MLP classifier on ``(N, D)`` inputs with ``(x, y)`` batches and cross-entropy."""

    def __init__(self, in_dim: int = 8, num_classes: int = 4, hidden: int = 16, lr: float = 0.05) -> None:
        super().__init__()
        self.lr = lr
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("val_loss", loss)
        return loss

    def test_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.validation_step(batch, batch_idx)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def blobs(n: int = 64, in_dim: int = 8, num_classes: int = 4, seed: int = 0) -> TensorDataset:
    """Separable Gaussian blobs: class c is centred at 3 * e_c."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % num_classes
    centres = torch.zeros(num_classes, in_dim)
    centres[torch.arange(num_classes), torch.arange(num_classes) % in_dim] = 3.0
    x = centres[y] + torch.randn(n, in_dim, generator=g)
    return TensorDataset(x, y)


def loader(dataset: Any, batch_size: int = 16, shuffle: bool = False, **kw: Any) -> DataLoader[Any]:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, **kw)


class LeaveTheProcessGroupTogether(pl.Callback):
    """Under DDP, every rank leaves the process group at teardown, together, while all are alive.

    Left to the interpreter's exit, a rank can tear its gloo process group down while its peer is
    already gone and abort ("terminate called without an active exception") after a fit whose
    results were right; a barrier and an explicit destroy on every rank end the run cleanly.
    """

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            trainer.strategy.barrier("recipe-tests-teardown")
            torch.distributed.destroy_process_group()


def fast_trainer(root: Path | str, *, logger: Any = "tb", **kw: Any) -> pl.Trainer:
    """A CPU Trainer without progress bar, summary or checkpoints, logging to TensorBoard by default."""
    if logger == "tb":
        logger = TensorBoardLogger(str(root), name="", version="run")
    defaults: dict[str, Any] = dict(
        accelerator="cpu" if "strategy" not in kw else "auto",
        devices=1,
        max_epochs=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=logger,
        default_root_dir=str(root),
        num_sanity_val_steps=0,
    )
    defaults.update(kw)
    if "ddp" in str(defaults.get("strategy", "")):
        defaults["callbacks"] = [*list(defaults.get("callbacks") or []), LeaveTheProcessGroupTogether()]
    return pl.Trainer(**defaults)


def read_events(log_dir: Path | str) -> EventAccumulator:
    """Every event of a TensorBoard log dir, nothing sampled away."""
    ea = EventAccumulator(
        str(log_dir),
        size_guidance={"scalars": 0, "images": 0, "tensors": 0, "histograms": 0, "compressedHistograms": 0},
    )
    ea.Reload()
    return ea


def scalar_values(ea: EventAccumulator, tag: str) -> list[float]:
    return [e.value for e in ea.Scalars(tag)]


def text_values(ea: EventAccumulator, tag: str) -> list[str]:
    """The strings written by ``add_text`` under ``tag`` (stored as tensors by the text plugin)."""
    out = []
    for event in ea.Tensors(f"{tag}/text_summary"):
        out.append(event.tensor_proto.string_val[0].decode("utf-8"))
    return out


def finding_values(ea: EventAccumulator, tag_prefix: str) -> dict[str, float]:
    """The values of a check's Findings as its last ``<tag_prefix>/finding`` text shows them."""
    values: dict[str, float] = {}
    texts = text_values(ea, f"{tag_prefix}/finding")
    for line in (texts[-1] if texts else "").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 2 and cells[0] not in ("quantity", "---"):
            values[cells[0]] = float(cells[1])
    return values
