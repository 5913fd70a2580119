"""ModuleSnapshot puts a trained module back bit for bit, in the same tensor objects."""

from __future__ import annotations

import torch
from torch import nn

from recipe_callbacks.core.snapshot import ModuleSnapshot, has_lazy_tensors, trained_in_place


class Stateful(nn.Module):
    """Keeps what a training_step often changes: a counter, a list of outputs, a cached tensor, a
    tensor attribute updated in place, BatchNorm statistics; bf16 and non-contiguous tensors too."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
        self.low = nn.Parameter(torch.randn(3, 5).to(torch.bfloat16))
        self.register_buffer("strided", torch.randn(4, 6).t())  # not contiguous: cloned in memory
        self.calls = 0
        self.outputs: list[torch.Tensor] = []
        self.total = torch.zeros(2)
        self.cache: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x) + self.low.float().sum()
        self.calls += 1
        self.outputs.append(out.detach())
        self.total += out.detach().sum(0)
        self.cache = out.detach()
        self.strided.mul_(2)
        return out


def test_restore_is_bit_identical_in_the_same_objects() -> None:
    torch.manual_seed(0)
    model = Stateful().train()
    model(torch.randn(4, 4)).sum().backward()  # existing gradients must come back too
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    state = {k: v.clone() for k, v in model.state_dict().items()}
    objects = {n: p for n, p in model.named_parameters()}
    total = model.total
    with trained_in_place(model) as snap:
        assert snap.tensors >= len(state)
        opt = torch.optim.Adam(model.parameters(), lr=0.1)
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            model(torch.randn(4, 4)).sum().backward()
            opt.step()
        model.new_attribute = 1
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(model.get_parameter(n) is p for n, p in objects.items())
    assert all(torch.equal(grads[n], p.grad) for n, p in model.named_parameters() if p.grad is not None)
    assert model.calls == 1 and len(model.outputs) == 1 and model.total is total
    assert torch.equal(model.total, model.outputs[0].sum(0)) and torch.equal(model.cache, model.outputs[0])
    assert not hasattr(model, "new_attribute")


def test_lazy_modules_are_told_apart() -> None:
    assert has_lazy_tensors(nn.Sequential(nn.LazyLinear(3)))
    net = nn.Sequential(nn.LazyLinear(3))
    net(torch.ones(1, 2))
    assert not has_lazy_tensors(net)
    snap = ModuleSnapshot(nn.Sequential(nn.LazyLinear(3), nn.Linear(3, 1)))  # lazy tensors are left out
    assert snap.tensors == 2
    snap.close()
