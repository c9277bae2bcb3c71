"""The example recipes in recipes/ stay runnable by stock mergekit and match their scores file."""
import hashlib
import re
from pathlib import Path

import pytest
import yaml

from mechmerge.merge import engine

ROOT = Path(__file__).resolve().parents[2]
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def test_there_are_examples():
    assert len(RECIPES) >= 3


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_plans_in_mergekit_and_names_its_scores(path, monkeypatch):
    monkeypatch.chdir(ROOT)  # model paths are relative to the repository root
    text = path.read_text()
    m = re.search(r"^# scores: (\S+) \(sha256 ([0-9a-f]{64})\)", text, re.M)
    assert m, "provenance header missing"
    scores = ROOT / m.group(1)
    assert hashlib.sha256(scores.read_bytes()).hexdigest() == m.group(2), \
        f"{path.name} was built from another scores file: rerun `bash recipes/build.sh`"
    cfg = yaml.safe_load(text)
    for model in cfg["models"]:
        assert (ROOT / model["model"] / "config.json").exists()
    engine.validate(cfg)
