"""Recipe strategies: scores in, per-expert per-unit task-vector weights out.

A strategy is one small function in its own file, registered with `@strategy`:

    @strategy("share", grid={"scale": [0.5, 1.0, 1.5]})
    def share(view: ScoreView, *, scale: float = 1.0, power: float = 1.0) -> np.ndarray:
        ...  # return weights [experts, units]

Its keyword-only parameters (annotated float/int/bool/str, with defaults) are its
schema: `mechmerge recipe --param NAME=VALUE` sets them, unknown names are refused
with a suggestion, and `grid` lists the values `--calibrate` tries. Weights multiply
each expert's task vector (E - B) per unit; 1.0 everywhere with one expert is the
expert itself.
"""

from __future__ import annotations

import importlib
import inspect
import math
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ...errors import UserError, did_you_mean
from ...registry import Registry
from ..view import ScoreView


@dataclass(frozen=True)
class Strategy:
    name: str
    fn: Callable[..., np.ndarray]
    params: Dict[str, inspect.Parameter]
    grid: Dict[str, List[Any]] = field(default_factory=dict)
    doc: str = ""
    bounds: Dict[str, Tuple[Optional[float], Optional[float]]] = field(default_factory=dict)  # inclusive

    def defaults(self) -> Dict[str, Any]:
        return {n: p.default for n, p in self.params.items()}

    def coerce(self, raw: Dict[str, Any]) -> Dict[str, Any]:
        """Validate and type-convert user parameters; unknown names are errors."""
        out = {}
        for name, value in raw.items():
            if name not in self.params:
                raise UserError(f"strategy {self.name!r} has no parameter {name!r}{did_you_mean(name, self.params)}; "
                                f"parameters: {', '.join(self.params) or 'none'}")
            tp = self.params[name].annotation
            try:
                if tp is bool and isinstance(value, str):
                    value = value.lower() in ("1", "true", "yes", "on")
                out[name] = tp(value) if tp in (int, float, str, bool) else value
            except (TypeError, ValueError):
                raise UserError(f"strategy {self.name!r}: parameter {name}={value!r} is not a {tp.__name__}") from None
            v = out[name]
            if isinstance(v, float) and not math.isfinite(v):
                raise UserError(f"strategy {self.name!r}: parameter {name}={value!r} must be a finite number")
            lo, hi = self.bounds.get(name, (None, None))
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                span = (f"[{lo}, {hi}]" if lo is not None and hi is not None
                        else f">= {lo}" if lo is not None else f"<= {hi}")
                raise UserError(f"strategy {self.name!r}: parameter {name}={value!r} is out of range (expected {span})")
        return out

    def __call__(self, view: ScoreView, **params: Any) -> np.ndarray:
        full = {**self.defaults(), **self.coerce(params)}
        w = np.asarray(self.fn(view, **full), dtype=np.float64)
        if w.shape != (len(view.experts), len(view.units)):
            raise RuntimeError(f"strategy {self.name} returned shape {w.shape}")
        if not np.isfinite(w).all():
            raise RuntimeError(f"strategy {self.name} returned non-finite weights")
        return w


STRATEGIES: Registry[Strategy] = Registry("strategy")


def strategy(name: str, grid: Dict[str, List[Any]] | None = None,
             bounds: Dict[str, Tuple[Optional[float], Optional[float]]] | None = None):
    def deco(fn):
        sig = inspect.signature(fn)
        params = {n: p for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        for n, p in params.items():
            if p.default is inspect.Parameter.empty or p.annotation not in (int, float, bool, str):
                raise TypeError(f"strategy {name}: parameter {n} needs a default and an int/float/bool/str annotation")
        for n in bounds or {}:
            if n not in params:
                raise TypeError(f"strategy {name}: bounds for unknown parameter {n}")
        STRATEGIES.register(name)(Strategy(name, fn, params, dict(grid or {}), inspect.getdoc(fn) or "",
                                           dict(bounds or {})))
        return fn

    return deco


def get(name: str) -> Strategy:
    return STRATEGIES.get(name)


def _load_builtin() -> None:
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


_load_builtin()
