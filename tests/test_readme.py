"""The README's Python examples run as they are written: every fenced ``python`` block, and every
inline ``presets.callbacks(...)`` / ``presets.trainer_kwargs(...)`` call."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

import recipe_callbacks
from recipe_callbacks import presets

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")


def test_every_python_block_of_the_readme_runs() -> None:
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.DOTALL)
    assert blocks
    namespace: dict[str, Any] = {}
    for block in blocks:  # in order: a later block may use the imports of an earlier one
        exec(compile(block, "README.md", "exec"), namespace)
    assert isinstance(namespace["trainer"].callbacks[-1], Callback)


def test_every_inline_preset_call_of_the_readme_runs() -> None:
    calls = [" ".join(c.split()) for c in re.findall(r"`(presets\.(?:callbacks|trainer_kwargs)\(.*?\))`", README,
                                                        flags=re.DOTALL)]
    assert any("InitLossCheck={" in c for c in calls), calls  # the override example is among them
    for call in calls:
        built = eval(call, {"presets": presets, "recipe_callbacks": recipe_callbacks})
        callbacks = built["callbacks"] if isinstance(built, dict) else built
        assert type(callbacks[-1]).__name__ == "RecipeReport", call
    override = next(c for c in calls if "InitLossCheck={" in c)
    (init_loss,) = [cb for cb in eval(override, {"presets": presets}) if type(cb).__name__ == "InitLossCheck"]
    assert init_loss.tolerance == 0.2 and init_loss.on_fail == "raise"
