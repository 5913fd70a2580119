"""Make the pictures of docs/pictures.md: a healthy run and planted bugs, read back from TensorBoard.

Runs the healthy digits CNN through every check that applies to it, and a few planted-bug
scenarios of ``examples/planted_bugs.py``, then copies the last image of every ``recipe.*`` tag of
each run out of its TensorBoard event files into ``docs/pictures/<scenario>/<check>.<quantity>.png``
(the exact pixels TensorBoard shows). ``make docs`` runs it before building the site.

    python docs/make_pictures.py                 # into docs/pictures/
    python docs/make_pictures.py --out /tmp/pics
"""

from __future__ import annotations

import argparse
import io
import logging
import sys
import tempfile
import warnings
from pathlib import Path

from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from examples.planted_bugs import run_scenarios  # noqa: E402

# scenario of examples/planted_bugs.py -> the directory its pictures land in
SCENARIOS = {
    "control_data_inspector": "healthy",  # the shared healthy digits run (log dir control_digits)
    "control_causal_mask": "healthy_char_lm",
    "one_class_labels": "one_class_labels",
    "large_final_weights": "large_final_weights",
    "default_bias_imbalanced": "default_bias_imbalanced",
    "forward_ignores_x": "forward_ignores_x",
    "lr_zero": "lr_zero",
    "flat_loss": "flat_loss",
    "lr_too_high": "lr_too_high",
    "reshape_mixes_batch": "reshape_mixes_batch",
    "attention_off_by_one": "attention_off_by_one",
    "cosine_tmax_epochs": "cosine_tmax_epochs",
    "noise_filters": "noise_filters",
    "frozen_head_ratio": "frozen_head_ratio",
}
# runs whose log dir is not named after the scenario
LOG_DIRS = {"control_data_inspector": "control_digits"}


def export_images(log_dir: Path, out: Path) -> list[Path]:
    """The last image of every ``recipe.*`` tag under ``log_dir`` as ``out/<check>.<quantity>.png``."""
    written = []
    for events in sorted({p.parent for p in log_dir.rglob("events.out.tfevents.*")}):
        ea = EventAccumulator(str(events), size_guidance={"images": 0})
        ea.Reload()
        for tag in ea.Tags()["images"]:
            if not tag.startswith("recipe."):
                continue
            name = tag.removeprefix("recipe.").replace("/", ".") + ".png"
            out.mkdir(parents=True, exist_ok=True)
            image = Image.open(io.BytesIO(ea.Images(tag)[-1].encoded_image_string))
            image.save(out / name)
            written.append(out / name)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "pictures"), help="where the PNGs go")
    args = parser.parse_args(argv)
    out = Path(args.out)
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="recipe_pictures_") as tmp:
        results = run_scenarios(list(SCENARIOS), log_dir=tmp)
        for result in results:
            print(f"{result.name:26s} {result.check:26s} {result.status}")
        count = 0
        for scenario, target in SCENARIOS.items():
            count += len(export_images(Path(tmp) / LOG_DIRS.get(scenario, scenario), out / target))
    print(f"{count} pictures written under {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
