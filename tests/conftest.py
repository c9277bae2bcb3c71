import os
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402

# Tiny models: one thread is faster than two, and robust when the CPU is shared.
torch.set_num_threads(1)

from helpers import FAMILIES, default_pairs, make_model, plant_expert, write_probes  # noqa: E402


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def probes_file(models_dir) -> Path:
    return write_probes(models_dir / "probes.jsonl", default_pairs(6))


@pytest.fixture(scope="session", params=FAMILIES)
def family_base(request, models_dir) -> tuple:
    fam = request.param
    path = models_dir / f"base-{fam}"
    if not path.exists():
        make_model(fam, path, seed=1)
    return fam, path


PLANTED = {
    "llama": ["model.layers.0.self_attn.v_proj", "model.layers.2.mlp.down_proj"],
    "mistral": ["model.layers.1.self_attn.o_proj", "model.layers.2.mlp.up_proj"],
    "qwen2": ["model.layers.0.self_attn.q_proj", "model.layers.1.mlp.gate_proj"],
    "qwen3": ["model.layers.0.self_attn.k_norm", "model.layers.2.mlp.down_proj"],
    "gemma2": ["model.layers.1.self_attn.v_proj", "model.layers.2.post_feedforward_layernorm"],
    "gemma3_text": ["model.layers.0.mlp.down_proj", "model.layers.2.self_attn.o_proj"],
    "phi3": ["model.layers.0.self_attn.qkv_proj", "model.layers.2.mlp.gate_up_proj"],
    "gpt2": ["transformer.h.0.attn.c_attn", "transformer.h.2.mlp.c_fc"],
}


@pytest.fixture(scope="session")
def planted(family_base, probes_file, models_dir) -> tuple:
    """(family, base dir, expert dir, planted unit names)."""
    fam, base = family_base
    path = models_dir / f"expert-{fam}"
    if not path.exists():
        plant_expert(base, path, PLANTED[fam], probes_file)
    return fam, base, path, PLANTED[fam]


@pytest.fixture(scope="session")
def scored_pair(tmp_path_factory):
    """A llama base, two planted experts on different units and tasks, and their scores."""
    from mechmerge.patching.score import ScoreOptions, score

    d = tmp_path_factory.mktemp("pair")
    base = make_model("llama", d / "base", seed=3)
    pa = write_probes(d / "a.jsonl", [(f"rev {s}=", s[::-1]) for s in ["abc", "hij", "cad", "bee", "fig", "jab"]])
    pb = write_probes(d / "b.jsonl", [(f"dup {s}=", s + s) for s in ["ab", "ci", "hj", "ee", "fa", "dg"]])
    a = plant_expert(base, d / "a", ["model.layers.0.self_attn.v_proj", "model.layers.1.mlp.down_proj"], pa)
    b = plant_expert(base, d / "b", ["model.layers.1.mlp.down_proj", "model.layers.2.self_attn.q_proj"], pb, seed=1)
    out = d / "scores.json"
    score(ScoreOptions(base=str(base), experts={"a": str(a), "b": str(b)}, probes={"a": str(pa), "b": str(pb)},
                       out=str(out), progress=False))
    return d, out
