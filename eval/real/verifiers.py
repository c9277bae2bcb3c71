"""Programmatic checks of instruction-following constraints (IFEval-style), one function each.

A verifier takes the model's response and the constraint's keyword arguments (the same
ones the prompt was built with) and returns True when the response satisfies the
constraint. They follow IFEval's checkers where one exists (`change_case:english_capital`,
`detectable_format:json_format`, `startend:end_checker`, `detectable_format:
number_bullet_lists`, `punctuation:no_comma`), so scores are comparable in spirit.

    from eval.real.verifiers import verify
    verify("no_commas", "No commas here.")          # True
    verify("bullets", "* a\n* b", n=2)              # True
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

from mechmerge.registry import Registry

Verifier = Callable[..., bool]
VERIFIERS: Registry[Verifier] = Registry("constraint")


def verifier(name: str) -> Callable[[Verifier], Verifier]:
    """Register `fn(response, **kwargs) -> bool` as the check of constraint `name`."""
    return VERIFIERS.register(name)


def verify(name: str, response: str, **kwargs: Any) -> bool:
    return bool(VERIFIERS.get(name)(response, **kwargs))


def names() -> list[str]:
    return VERIFIERS.names()


@verifier("uppercase")
def uppercase(response: str) -> bool:
    """Every cased letter is a capital, and there is at least one."""
    return response.isupper()


@verifier("lowercase")
def lowercase(response: str) -> bool:
    """Every cased letter is lowercase, and there is at least one."""
    return response.islower()


_FENCE = re.compile(r"^```(?:json|JSON|Json)?\s*\n?(.*?)\n?```$", re.S)


@verifier("json")
def json_object(response: str, key: str = "answer") -> bool:
    """The whole response is one JSON object (a ```json fence around it is tolerated, as in
    IFEval) holding `key` with a non-empty string value."""
    text = response.strip()
    m = _FENCE.match(text)
    if m:
        text = m.group(1).strip()
    try:
        obj = json.loads(text)
    except ValueError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get(key), str) and bool(obj[key].strip())


@verifier("end_phrase")
def end_phrase(response: str, phrase: str) -> bool:
    """The response ends with `phrase` (case-insensitive, surrounding whitespace ignored)."""
    return response.strip().lower().endswith(phrase.strip().lower())


_STAR_BULLET = re.compile(r"^\s*\*[^\*].*$", re.M)
_DASH_BULLET = re.compile(r"^\s*-.*$", re.M)


@verifier("bullets")
def bullets(response: str, n: int) -> bool:
    """Exactly `n` markdown bullet lines ('* ' or '- '), counted as IFEval counts them."""
    return len(_STAR_BULLET.findall(response)) + len(_DASH_BULLET.findall(response)) == n


@verifier("no_commas")
def no_commas(response: str) -> bool:
    """No comma anywhere (ASCII or full-width), and something was said."""
    return bool(response.strip()) and "," not in response and "\uff0c" not in response
