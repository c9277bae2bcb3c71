"""Units: the pieces of a model that Weight Patching copies from an expert into the base.

A unit is a named set of tensor slices. Module units (the default) are every module
that owns parameters, named after the parameter without its `.weight`/`.bias`
suffix (`model.layers.3.mlp.down_proj`). Layer units are whole decoder blocks
(`model.layers.3`). Head units are one attention head's (or one grouped-query
group's) rows of q/k/v and columns of o. Units come back in model order.

`layer` is where a unit first acts: -1 for embeddings (everything downstream
changes), 0..L-1 for decoder blocks, L for the final norm and lm_head.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import unknown
from .families import Family, category_of, config_value

GRANULARITIES = ("module", "layer", "head")


@dataclass(frozen=True)
class Slice:
    """A tensor, or rows/columns [start, stop) of it along `dim`."""

    tensor: str
    dim: Optional[int] = None
    start: int = 0
    stop: int = 0

    def index(self):
        if self.dim is None:
            return ...
        return (slice(None),) * self.dim + (slice(self.start, self.stop),)


@dataclass(frozen=True)
class Unit:
    name: str
    layer: int
    kind: str  # module path inside a block ('mlp.down_proj'), 'block', or the full name outside blocks
    category: str
    slices: Tuple[Slice, ...]

    @property
    def tensors(self) -> Tuple[str, ...]:
        return tuple(dict.fromkeys(s.tensor for s in self.slices))


def _module_of(param: str) -> str:
    return param.rsplit(".", 1)[0] if "." in param else param


def discover_units(
    param_names: Sequence[str],
    family: Family,
    num_layers: int,
    granularity: str = "module",
    config: Optional[dict] = None,
) -> List[Unit]:
    """Units over `param_names` (in model order; tied duplicates already removed)."""
    if granularity not in GRANULARITIES:
        raise unknown("granularity", granularity, GRANULARITIES)
    groups: "OrderedDict[str, List[str]]" = OrderedDict()
    for p in param_names:
        layer = family.layer_of(p)
        if granularity == "layer" and layer is not None:
            key = f"{family.layers}.{layer}"
        else:
            key = _module_of(p)
        groups.setdefault(key, []).append(p)

    units: List[Unit] = []
    for name, params in groups.items():
        layer = family.layer_of(params[0])
        if layer is None:
            layer = -1 if name in family.embeddings else num_layers
            kind = name
        else:
            kind = "block" if granularity == "layer" else family.local_name(name)
        unit = Unit(name, layer, kind, category_of(kind, family), tuple(Slice(p) for p in params))
        if granularity == "head" and unit.category == "attention" and layer < num_layers:
            units.extend(_head_units(unit, family, config or {}, set(param_names)))
        else:
            units.append(unit)
    return units


def head_groups(config: dict) -> Tuple[int, int, int]:
    """(query heads, k/v heads, query heads per head unit) of a config."""
    n_heads = int(config_value(config, "num_attention_heads"))
    n_kv = int(config.get("num_key_value_heads") or n_heads)
    return n_heads, n_kv, n_heads // n_kv


def head_info(config: dict) -> Dict[str, Any]:
    """What a head unit is for this model, as the scores file records it; `note` says it for
    the user: with grouped-query attention a unit is not one head, and with a single k/v
    head it is the whole attention block."""
    n_heads, n_kv, per = head_groups(config)
    if per == 1:
        note = f"head granularity: {n_heads} heads, each its own unit"
    else:
        what = "the whole attention of its layer" if n_kv == 1 else f"a group of {per} query heads"
        note = (f"head granularity: {n_heads} query heads share {n_kv} k/v head{'s' if n_kv > 1 else ''} "
                f"(grouped-query attention), so each head unit is {what}, scored together")
    return {"query_heads": n_heads, "kv_heads": n_kv, "query_heads_per_unit": per, "note": note}


def _head_units(unit: Unit, family: Family, config: dict, params: set) -> List[Unit]:
    """Split the attention projections of one block into per-group head units.

    With grouped-query attention a k/v head serves a group of query heads, so one
    unit is a whole group: its query heads' q rows and o columns plus its k and v
    rows (and bias entries). Groups are emitted in place of the q (or fused qkv)
    projection; the k/v/o module units emit nothing, their slices being in the groups.
    """
    att = family.attention
    primary = att["q"] if att["layout"] == "separate" else att["qkv"]
    if unit.kind != primary:
        if unit.kind == att["o"]:
            # the output bias is added after the heads are summed: it belongs to no head
            bias = tuple(s for s in unit.slices if s.tensor.endswith(".bias"))
            return [Unit(unit.name, unit.layer, unit.kind, unit.category, bias)] if bias else []
        owned = {att.get(k) for k in ("q", "k", "v", "qkv")}
        return [] if unit.kind in owned else [unit]
    n_heads, n_kv, per_group = head_groups(config)
    hidden = int(config_value(config, "hidden_size"))
    head_dim = int(config.get("head_dim") or hidden // n_heads)
    block = unit.name[: -len(unit.kind) - 1]
    q_w, kv_w = n_heads * head_dim, n_kv * head_dim
    # GPT-2's Conv1D stores weights transposed: [in, out].
    out_dim = 1 if att["layout"] == "conv1d_qkv" else 0

    def rows(module: str, lo: int, hi: int) -> List[Slice]:
        sl = [Slice(f"{module}.weight", out_dim, lo, hi)]
        if f"{module}.bias" in params:
            sl.append(Slice(f"{module}.bias", 0, lo, hi))
        return sl

    units = []
    for g in range(n_kv):
        q0, q1 = g * per_group * head_dim, (g + 1) * per_group * head_dim
        k0, k1 = g * head_dim, (g + 1) * head_dim
        if att["layout"] == "separate":
            sl = rows(f"{block}.{att['q']}", q0, q1) + rows(f"{block}.{att['k']}", k0, k1) + rows(
                f"{block}.{att['v']}", k0, k1)
        else:  # fused [q | k | v] along the output dimension
            qkv = f"{block}.{att['qkv']}"
            sl = rows(qkv, q0, q1) + rows(qkv, q_w + k0, q_w + k1) + rows(qkv, q_w + kv_w + k0, q_w + kv_w + k1)
        sl.append(Slice(f"{block}.{att['o']}.weight", 1 - out_dim, q0, q1))
        parent = primary.rsplit(".", 1)[0]
        units.append(Unit(f"{block}.{parent}.heads.{g}", unit.layer, f"{parent}.heads.{g}", "attention", tuple(sl)))
    return units
