"""The constraint verifiers as mechmerge metrics: `fn(prediction, probe) -> bool`.

mechmerge's evaluator imports a metric given as "package.module:function" lazily, so

    Evaluator({"bullets": "data/bullets/test.jsonl"}, tok, {"bullets": "eval.real.metrics:bullets"})

checks greedy outputs with `verifiers.bullets`. A probe carries only its chat, so the
keyword arguments the prompt was built with (how many bullets, which end phrase, which
JSON key) are read back from the user's instruction, then checked against the reference
answer, which was written to satisfy them: a probe whose instruction and reference
disagree fails loudly instead of silently scoring every model zero.
"""

from __future__ import annotations

import re
from typing import Any, Dict

from mechmerge.errors import UserError
from mechmerge.probes import Probe

from . import verifiers
from .constraints import END_PHRASES

_N_BULLETS = re.compile(r"exactly (\d+) bullet")


def prompt_of(probe: Probe) -> str:
    if probe.messages is None:
        return probe.prompt
    return " ".join(c for r, c in probe.messages[:-1] if r == "user")


def kwargs_of(name: str, probe: Probe) -> Dict[str, Any]:
    """The constraint's keyword arguments as the probe's instruction states them."""
    text = prompt_of(probe)
    if name == "bullets":
        m = _N_BULLETS.search(text)
        kw: Dict[str, Any] = {"n": int(m.group(1))} if m else {}
    elif name == "end_phrase":
        found = [p for p in END_PHRASES if p in text]
        kw = {"phrase": found[0]} if len(found) == 1 else {}
    elif name == "json":
        m = re.search(r'"(\w+)"', text)
        kw = {"key": m.group(1)} if m else {}
    else:
        return {}
    if not kw:
        raise UserError(f"probe line {probe.line}: cannot read the {name} constraint's arguments from {text!r}")
    if probe.response and not verifiers.verify(name, probe.response, **kw):
        raise UserError(f"probe line {probe.line}: the reference answer fails {name}{kw}; wrong metric for this file?")
    return kw


def _metric(name: str):
    def fn(prediction: str, probe: Probe) -> bool:
        return verifiers.verify(name, prediction, **kwargs_of(name, probe))

    fn.__name__ = name
    fn.__doc__ = f"verifiers.{name} on the prediction, with the arguments the probe's instruction states."
    return fn


uppercase = _metric("uppercase")
lowercase = _metric("lowercase")
json = _metric("json")
end_phrase = _metric("end_phrase")
bullets = _metric("bullets")
no_commas = _metric("no_commas")


def name_of(constraint: str) -> str:
    """The metric string mechmerge's evaluator and suites take for `constraint`."""
    verifiers.VERIFIERS.get(constraint)
    return f"{__name__}:{constraint}"
