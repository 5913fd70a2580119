"""Observing leaves the model, its modes and the RNG as they were; detached copies share nothing."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch
from torch import nn

from recipe_callbacks.plumbing.observe import detached_copy, observing, training_step_loss
from tests.support import TinyClassifier, blobs, fast_trainer, loader


def test_observing_restores_modes_and_rng() -> None:
    net = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.BatchNorm1d(3))
    net.train()
    net[2].eval()  # a deliberately mixed mode must come back as it was
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    expected = (torch.rand(3), random.random(), np.random.rand())
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    with observing(net):
        assert not any(m.training for m in net.modules())
        out = net(torch.randn(4, 3))
        assert not out.requires_grad
        torch.rand(100), random.random(), np.random.rand()
    assert [m.training for m in net.modules()] == [True, True, True, False]
    assert torch.equal(torch.rand(3), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]


def test_observing_restores_modes_after_an_exception() -> None:
    net = nn.Linear(2, 2).train()
    try:
        with observing(net):
            raise RuntimeError("inside")
    except RuntimeError:
        pass
    assert net.training


def test_detached_copy_is_independent_and_trainable(tmp_path: Any) -> None:
    model = TinyClassifier()
    trainer = fast_trainer(tmp_path, max_steps=1)
    trainer.fit(model, loader(blobs()))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    twin = detached_copy(model)
    assert twin._trainer is None and model._trainer is trainer
    x, y = blobs()[:8]
    loss = training_step_loss(twin, (x, y))
    assert loss is not None and loss.requires_grad
    loss.backward()
    with torch.no_grad():
        for p in twin.parameters():
            p -= 1.0 * p.grad
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert not torch.equal(twin.net[0].weight, model.net[0].weight)


def test_detached_copy_leaves_callback_hooks_behind_and_keeps_the_models_own() -> None:
    from lightning.pytorch.callbacks import Callback

    class Watcher(Callback):
        calls = 0

        def hook(self, module: Any, args: Any, output: Any) -> None:
            self.calls += 1

    own_calls: list[int] = []
    model = TinyClassifier()
    watcher = Watcher()
    model.register_forward_hook(watcher.hook)
    model.register_forward_hook(lambda module, args, output: own_calls.append(1))
    twin = detached_copy(model)
    twin(torch.zeros(2, 8))
    assert watcher.calls == 0 and own_calls == [1]
    model(torch.zeros(2, 8))
    assert watcher.calls == 1 and own_calls == [1, 1]
