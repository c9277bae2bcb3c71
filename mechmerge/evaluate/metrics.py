"""Per-probe metrics: prediction + probe -> correct or not.

Registered by name (`exact` is the default). A metric can also be given as
`package.module:function` and is imported lazily, so evaluation code outside
mechmerge (e.g. the instruction-following verifiers under eval/real) plugs in
without registering anything here. Such a metric is code that runs: importing its
module executes it, so a suite file's (or a --metric's) `module:function` deserves the
trust you would give a script.
"""

from __future__ import annotations

import importlib
from typing import Callable

from ..errors import UserError, did_you_mean
from ..probes import Probe
from ..registry import Registry
from .generate import exact_match, normalize

Metric = Callable[[str, Probe], bool]


class _Metrics(Registry[Metric]):
    def get(self, name: str) -> Metric:
        if ":" in name and name not in self:
            module, _, attr = name.partition(":")
            if not module or not attr:
                raise UserError(f"metric {name!r}: expected package.module:function")
            try:
                fn = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as e:
                raise UserError(f"metric {name!r} cannot be imported ({e})") from None
            if not callable(fn):  # found now, not as a TypeError after every generation
                raise UserError(f"metric {name!r} is a {type(fn).__name__}, not a function "
                                "(prediction, probe) -> bool")
            return fn
        if name not in self:
            # `logprob` is handled by the evaluator (no generation, so no metric function) and
            # plugins by the branch above; both belong in the list of what is valid
            raise UserError(f"unknown metric {name!r}{did_you_mean(name, [*self.names(), 'logprob'])}; valid: "
                            f"{', '.join(sorted([*self.names(), 'logprob']))}, or package.module:function")
        return super().get(name)


METRICS: _Metrics = _Metrics("metric")


@METRICS.register("exact")
def exact(pred: str, probe: Probe) -> bool:
    """Greedy output equals the reference after `normalize` (surrounding whitespace stripped)."""
    return exact_match(pred, probe.response)


@METRICS.register("prefix")
def prefix(pred: str, probe: Probe) -> bool:
    """The reference is a prefix of the output (for models that do not stop)."""
    return normalize(pred).startswith(normalize(probe.response))
