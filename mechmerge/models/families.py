"""Architecture knowledge as data: which family a config belongs to and where its parts live.

The facts themselves are in `families.json`; this module only loads and looks them up,
so supporting a new family that follows an existing layout is a JSON edit.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any, Dict, Optional, Tuple

from ..errors import UserError


@dataclass(frozen=True)
class Family:
    name: str
    model_types: Tuple[str, ...]
    layers: str
    embeddings: Tuple[str, ...]
    final_norm: str
    lm_head: str
    attention: Dict[str, str]
    attn_implementation: str
    config_keys: Dict[str, str] = field(default_factory=dict)  # standard name -> this family's config name
    tied_by_default: bool = False

    def layer_of(self, param_name: str) -> Optional[int]:
        """Decoder block index of a parameter, or None outside the blocks."""
        m = re.match(re.escape(self.layers) + r"\.(\d+)\.", param_name)
        return int(m.group(1)) if m else None

    def local_name(self, param_name: str) -> str:
        """'model.layers.3.mlp.down_proj.weight' -> 'mlp.down_proj.weight'."""
        m = re.match(re.escape(self.layers) + r"\.\d+\.(.*)", param_name)
        return m.group(1) if m else param_name


# Unit categories for reports and plots, matched on the module path inside a block.
_CATEGORY_PATTERNS = (
    ("norm", re.compile(r"(norm|ln_\d|ln_f)")),
    ("attention", re.compile(r"(attn|attention)")),
    ("mlp", re.compile(r"(mlp|feed_forward|ffn)")),
)


def category_of(module_kind: str, family: Family) -> str:
    """'attention', 'mlp', 'norm', 'embedding', 'lm_head', 'block' or 'other'."""
    if module_kind in family.embeddings:
        return "embedding"
    if module_kind == family.lm_head:
        return "lm_head"
    if module_kind == family.final_norm:
        return "norm"
    if module_kind == "block":
        return "block"
    for name, pat in _CATEGORY_PATTERNS:
        if pat.search(module_kind):
            return name
    return "other"


@lru_cache(maxsize=1)
def _table() -> Dict[str, Family]:
    raw = json.loads(resources.files("mechmerge.models").joinpath("families.json").read_text())
    out = {}
    for name, d in raw.items():
        if name.startswith("_"):
            continue
        out[name] = Family(
            name=name,
            model_types=tuple(d["model_types"]),
            layers=d["layers"],
            embeddings=tuple(d["embeddings"]),
            final_norm=d["final_norm"],
            lm_head=d["lm_head"],
            attention=dict(d["attention"]),
            attn_implementation=d["attn_implementation"],
            config_keys=dict(d.get("config_keys", {})),
            tied_by_default=bool(d.get("tied_by_default", False)),
        )
    return out


def config_value(config: Dict[str, Any], key: str) -> Any:
    """config[key] under its standard name, or under a family's own name for it (GPT-2's n_embd
    for hidden_size); any family's, since a partial config may not say its model type."""
    v = config.get(key)
    if v is None:
        for fam in _table().values():
            alias = fam.config_keys.get(key)
            if alias and config.get(alias) is not None:
                return config[alias]
    return v


def supported_model_types() -> list[str]:
    return sorted(t for f in _table().values() for t in f.model_types)


def family_for(config: Dict[str, Any], where: str = "") -> Family:
    """The Family of a config.json dict; a UserError naming the model type otherwise."""
    model_type = config.get("model_type")
    for fam in _table().values():
        if model_type in fam.model_types:
            return fam
    at = f" ({where})" if where else ""
    raise UserError(
        f"model type {model_type!r}{at} is not supported; supported: {', '.join(supported_model_types())}"
    )
