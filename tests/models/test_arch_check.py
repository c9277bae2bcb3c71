"""Base and expert configs compare by meaning, whichever transformers version wrote them."""

import json
import shutil

import pytest
from helpers import make_model

from mechmerge.errors import UserError
from mechmerge.models.checkpoint import Checkpoint, check_compatible


def _as_v4(src, dst, theta):
    """The config as transformers 4 wrote it: rope_theta and rope_scaling, no rope_parameters."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    cfg.pop("rope_parameters", None)
    cfg.update(rope_theta=theta, rope_scaling=None)
    (dst / "config.json").write_text(json.dumps(cfg))
    return Checkpoint.open(str(dst), "expert")


def test_a_config_written_by_transformers_4_matches_its_v5_twin_and_a_rope_change_does_not(tmp_path):
    base_dir = make_model("llama", tmp_path / "base")
    base = Checkpoint.open(str(base_dir), "base")
    assert base.config["rope_parameters"]["rope_theta"] == 10000.0  # written by transformers 5
    check_compatible(base, _as_v4(base_dir, tmp_path / "same", 10000.0))
    with pytest.raises(UserError, match="rope_parameters"):
        check_compatible(base, _as_v4(base_dir, tmp_path / "long", 500000.0))
