"""Test-wide settings: one torch thread per test process (the suite runs in parallel on 2 cores),
and no seed or determinism setting left behind by an earlier test."""

import contextlib
from collections.abc import Iterator

import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _no_inherited_seed(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Lightning's seed_everything writes PL_GLOBAL_SEED / PL_SEED_WORKERS into os.environ, and its
    # DistributedSampler and worker seeding read them back: each test starts without them.
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)
    # Trainer(deterministic=True) turns deterministic algorithms on for the whole process and
    # leaves them on after fit: every test starts from torch's default (off).
    torch.use_deterministic_algorithms(False)
    yield


def pytest_configure(config: pytest.Config) -> None:
    # The stand-in accelerator (tests/standin) must be registered before the first backward pass of
    # the process: the autograd engine sizes its per-device queues once, at that first backward.
    from tests import standin

    with contextlib.suppress(Exception):  # no compiler: the stand-in device's own tests fail and say why
        standin.load()
