"""core.gradient_flow: grouping of parameter lives, backward order, layer names."""

from __future__ import annotations

from recipe_callbacks.core import gradient_flow as core


def life(name: str, numel: int = 10, **steps: bool | None) -> core.ParameterLife:
    p = core.ParameterLife(name, numel)
    p.observe(has_grad=bool(steps.get("has_grad", True)), finite=bool(steps.get("finite", True)),
              nonzero=bool(steps.get("nonzero", True)), changed=steps.get("changed", True),
              reset=steps.get("reset"))
    return p


def test_groups() -> None:
    lives = [
        life("ok.weight"), life("unused.weight", has_grad=False), life("zero.weight", nonzero=False),
        life("stuck.weight", changed=False), life("bert.pooler.dense.weight", has_grad=False),
        life("growing.weight", reset=False),
    ]
    orphan = life("orphan.weight")
    orphan.in_optimizer = False
    s = core.summarize_flow([*lives, orphan], allow_unused=["*pooler.*"])
    assert s.no_grad == ["unused.weight"] and s.zero_grad == ["zero.weight"]
    assert s.unchanged == ["stuck.weight"] and s.not_in_optimizer == ["orphan.weight"]
    assert s.allowed_unused == ["bert.pooler.dense.weight"] and s.not_reset == ["growing.weight"]
    assert s.dead_fraction == 20 / 70


def test_a_zero_gradient_at_the_first_step_only_is_live() -> None:
    p = life("lora.down.weight", nonzero=False)
    p.observe(has_grad=True, finite=True, nonzero=True, changed=True)
    assert p.live and core.summarize_flow([p]).zero_grad == []


def test_skipped_change_judgement_does_not_count_as_unchanged() -> None:
    p = life("w", changed=None)
    assert p.live and core.summarize_flow([p]).unchanged == []


def test_first_non_finite_follows_backward_order() -> None:
    assert core.first_non_finite(["c", "b", "a"], ["a", "b"]) == "b"
    assert core.first_non_finite(["c"], ["x", "y"]) == "x"
    assert core.first_non_finite(["c"], []) is None
