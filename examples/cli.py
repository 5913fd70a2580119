"""The digits demo behind LightningCLI: the recipe switched on from the command line or YAML.

    # a whole preset from the YAML config beside this file
    python examples/cli.py fit --config examples/cli_config.yaml
    # a whole preset with one flag
    python examples/cli.py fit --trainer.callbacks+=recipe_callbacks.presets.RecipePreset --trainer.max_epochs=2
    # single callbacks with their arguments
    python examples/cli.py fit --trainer.callbacks+=recipe_callbacks.InitLossCheck \\
        --trainer.callbacks.tolerance=0.2 --trainer.max_epochs=1
    # the resolved configuration, ready to save and run again
    python examples/cli.py fit --config examples/cli_config.yaml --print_config
"""

from __future__ import annotations

import sys
from pathlib import Path

from lightning.pytorch.cli import LightningCLI

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from examples.digits import DigitsCNN, DigitsDataModule


def main(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    return LightningCLI(DigitsCNN, DigitsDataModule, args=args, run=run, save_config_kwargs={"overwrite": True})


if __name__ == "__main__":
    main()
