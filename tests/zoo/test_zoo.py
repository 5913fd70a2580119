"""The zoo's fast subset: real model families under the presets at their defaults.

Healthy models get no warn or fail (other than :data:`~tests.zoo.families.KNOWN_ALARMS`, listed
by the test), nothing crashes, and each planted bug is caught by its check. ``make zoo`` runs
every family, both presets and every planted bug (``python -m tests.zoo.run``).
"""

from __future__ import annotations

import pytest

from tests.zoo.families import KNOWN_ALARMS, PLANTED
from tests.zoo.run import alarms, caught, run_case

pytest.importorskip("transformers")

HEALTHY = [
    ("hf_gpt2", "full"),
    ("nanogpt", "full"),
    ("lstm_lm", "skeleton"),
    ("unet", "skeleton"),
    ("imbalanced_binary", "skeleton"),
]
BUGS = [
    ("nanogpt", "leaky_mask", "full"),
    ("lstm_lm", "large_final_layer", "skeleton"),
    ("digits_cnn", "mixes_samples", "skeleton"),
]


@pytest.mark.parametrize(("family", "preset"), HEALTHY)
def test_healthy_family_gets_no_alarm(family: str, preset: str) -> None:
    outcome = run_case(family, None, preset)
    assert not outcome.crash, outcome.crash
    unexpected = [c for c in alarms(outcome) if (family, c) not in KNOWN_ALARMS]
    details = {c: outcome.summaries[c] for c in unexpected}
    assert not unexpected, details
    assert outcome.verdicts, "no check reported anything"
    assert all(v != "pending" for v in outcome.verdicts.values()), outcome.verdicts


@pytest.mark.parametrize(("family", "bug", "preset"), BUGS)
def test_planted_bug_is_caught(family: str, bug: str, preset: str) -> None:
    outcome = run_case(family, bug, preset, max_epochs=1)  # the one-off checks judge at init
    assert not outcome.crash, outcome.crash
    check = PLANTED[(family, bug)][0]
    assert caught(outcome), (check, outcome.summaries.get(check))
