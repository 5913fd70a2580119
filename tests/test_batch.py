"""Finding x and y in every batch shape, and the clear skip when it cannot."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from recipe_callbacks import BatchResolutionError, RecipeCallback, resolve_batch
from tests.support import TinyClassifier, blobs, fast_trainer, loader

X = torch.randn(4, 3)
Y = torch.tensor([0, 1, 2, 3])


@pytest.mark.parametrize(
    "batch",
    [(X, Y), [X, Y], (X, Y, torch.zeros(4)), {"x": X, "y": Y}, {"image": X, "label": Y, "id": [1, 2]},
     {"input": X, "target": Y}, {"inputs": X, "targets": Y}],
)
def test_common_shapes_resolve(batch: Any) -> None:
    r = resolve_batch(batch)
    assert r.x is X and r.y is Y
    assert r.with_input is not None
    rebuilt = resolve_batch(r.with_input(torch.zeros(4, 3)))
    assert torch.equal(rebuilt.x, torch.zeros(4, 3)) and rebuilt.y is Y
    assert type(r.with_input(X)) is type(batch) or isinstance(batch, dict)


def test_tensor_only_and_explicit_keys() -> None:
    assert resolve_batch(X).y is None
    r = resolve_batch({"pixels": X, "cls": Y}, input_key="pixels", target_key="cls")
    assert r.x is X and r.y is Y
    r = resolve_batch((Y, X), input_key="1", target_key="0")
    assert r.x is X and r.y is Y
    r = resolve_batch(("meta", X), batch_to_xy=lambda b: (b[1], None))
    assert r.x is X and r.with_input is None


@pytest.mark.parametrize(
    ("batch", "kwargs", "argument"),
    [
        ({"pixels": X}, {}, "input_key"),
        ({"x": X}, {"input_key": "img"}, "input_key"),
        ({"x": X}, {"target_key": "cls"}, "target_key"),
        ((X, Y), {"input_key": "image"}, "input_key"),
        (("text", Y), {}, "input_key"),
        (object(), {}, "batch_to_xy"),
    ],
)
def test_unresolvable_names_the_argument(batch: Any, kwargs: Any, argument: str) -> None:
    with pytest.raises(BatchResolutionError) as info:
        resolve_batch(batch, **kwargs)
    assert info.value.argument == argument
    assert argument in str(info.value)


class InputPeek(RecipeCallback):
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0 and self.resolve(trainer, batch) is not None:
            self.report(trainer, "pass", "found the input")


class DictBatchModel(TinyClassifier):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(self(batch["features_in"]), batch["y"])


def _dict_collate(items: list[Any]) -> dict[str, torch.Tensor]:
    return {"features_in": torch.stack([i[0] for i in items]), "y": torch.stack([i[1] for i in items])}


def test_unresolvable_batch_in_a_run_is_a_skip_not_a_crash(tmp_path: Any) -> None:
    check = InputPeek()
    trainer = fast_trainer(tmp_path, callbacks=[check], max_steps=1)
    trainer.fit(DictBatchModel(), loader(blobs(), collate_fn=_dict_collate))
    (finding,) = check.findings
    assert finding.status == "skip"
    assert "input_key" in finding.summary and finding.advice == "set InputPeek(input_key=...)"


def test_explicit_key_resolves_in_a_run(tmp_path: Any) -> None:
    check = InputPeek(input_key="features_in")
    trainer = fast_trainer(tmp_path, callbacks=[check], max_steps=1)
    trainer.fit(DictBatchModel(), loader(blobs(), collate_fn=_dict_collate))
    assert [f.status for f in check.findings] == ["pass"]


def test_x_mask_y_batches_take_the_last_item_as_the_target() -> None:
    ids = torch.randint(2, 50, (4, 6))
    mask = torch.ones(4, 6, dtype=torch.long)
    mask[:, 4:] = 0  # padding
    labels = torch.tensor([0, 1, 2, 1])
    for m in (mask, mask.bool()):
        r = resolve_batch((ids, m, labels))
        assert r.x is ids and r.y is labels
    features = torch.randn(4, 6, 3)
    assert resolve_batch((features, mask.bool(), labels)).y is labels
    # (x, y, weights): the second item is no mask of x, so it stays the target.
    weights = torch.ones(4)
    assert resolve_batch((torch.randn(4, 8), labels, weights)).y is labels
