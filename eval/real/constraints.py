"""Constraints for the instruction-following specialists: how the prompt states them, and
how a plain answer is rewritten to satisfy them.

Each constraint has the same name as its verifier (`verifiers.py`), two or three
phrasings of the instruction (so a specialist learns the constraint, not one sentence),
a sampler of its keyword arguments (which may look at the answer, e.g. to ask for no more
bullets than it has sentences), and a transform `plain answer -> compliant answer`.
`apply` checks the transform's output with the verifier, so a broken transform fails
loudly instead of writing training data that violates its own constraint.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from mechmerge.registry import Registry

from . import verifiers


@dataclass(frozen=True)
class Constraint:
    name: str
    phrasings: Tuple[str, ...]  # str.format templates over the kwargs
    transform: Callable[..., Optional[str]]  # (answer, **kwargs) -> response, None if impossible
    sample: Callable[[random.Random, str], Dict[str, Any]] = lambda rng, answer: {}

    def instruction(self, rng: random.Random, kwargs: Dict[str, Any]) -> str:
        return rng.choice(self.phrasings).format(**kwargs)


CONSTRAINTS: Registry[Constraint] = Registry("constraint")


Sampler = Callable[[random.Random, str], Dict[str, Any]]


def constraint(name: str, *phrasings: str, sample: Sampler = lambda rng, answer: {}):
    """Register the decorated transform as constraint `name` (which must have a verifier)."""
    def deco(fn):
        verifiers.VERIFIERS.get(name)  # fails with "did you mean" when the verifier is missing
        CONSTRAINTS.register(name)(Constraint(name, tuple(phrasings), fn, sample))
        return fn

    return deco


def apply(name: str, answer: str, kwargs: Dict[str, Any]) -> Optional[str]:
    """The compliant response for `answer`, verified; None when the answer cannot be rewritten."""
    out = CONSTRAINTS.get(name).transform(answer, **kwargs)
    if out is None:
        return None
    if not verifiers.verify(name, out, **kwargs):
        raise AssertionError(f"constraint {name!r}: transform output fails its own verifier: {out!r}")
    return out


@constraint("uppercase",
            "Your entire response should be in English, and in all capital letters.",
            "Write your whole answer in capital letters only.",
            "Answer using only UPPERCASE letters.")
def to_upper(answer: str) -> Optional[str]:
    out = answer.upper()
    return out if out.isupper() else None


@constraint("lowercase",
            "Your entire response should be in English, and in all lowercase letters. No capital letters are allowed.",
            "Write your whole answer in lowercase letters only.",
            "Answer without using any capital letters.")
def to_lower(answer: str) -> Optional[str]:
    out = answer.lower()
    return out if out.islower() else None


@constraint("json",
            'Wrap your entire output in JSON format: a single object with one key, "{key}".',
            'Return your whole answer as a JSON object of the form {{"{key}": "..."}}.',
            'Format the entire response as JSON, with your answer as the string value of the key "{key}".',
            sample=lambda rng, answer: {"key": "answer"})
def to_json(answer: str, key: str) -> str:
    return json.dumps({key: answer}, ensure_ascii=False)


END_PHRASES = ("Is there anything else I can help with?", "Let me know if you have additional questions.",
               "Hope this helps!", "That is all for now.")


@constraint("end_phrase",
            'Finish your response with this exact phrase: "{phrase}". No other words should follow it.',
            'End your answer with the exact phrase "{phrase}"',
            'Your reply must end with the words "{phrase}"',
            sample=lambda rng, answer: {"phrase": rng.choice(END_PHRASES)})
def add_end_phrase(answer: str, phrase: str) -> str:
    body = answer.rstrip()
    if body and body[-1] not in ".!?":
        body += "."
    return f"{body} {phrase}"


_LIST_MARKER = re.compile(r"^\s*(?:[*\-+•]|\d+[.)]|#+)\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")


def sentences(text: str) -> List[str]:
    """Sentences of `text` with list markers and line breaks flattened away."""
    lines = [_LIST_MARKER.sub("", ln).strip() for ln in text.splitlines()]
    flat = " ".join(ln for ln in lines if ln)
    flat = flat.replace("**", "")
    return [s.strip() for s in _SENTENCE_END.split(flat) if s.strip()]


def split_even(items: List[str], n: int) -> List[List[str]]:
    """`items` cut into `n` contiguous groups whose sizes differ by at most one."""
    k, r = divmod(len(items), n)
    out, i = [], 0
    for j in range(n):
        size = k + (1 if j < r else 0)
        out.append(items[i: i + size])
        i += size
    return out


def bullet_count(rng: random.Random, answer: str) -> int:
    """2, 3 or 4 with equal chances. Capping n at the answer's sentences made "exactly 2" 52 of
    64 test instructions (most answers have two or three sentences), so the split measured a
    two-bullet habit; answers with fewer sentences than n are cut at clauses (`bullet_units`)."""
    return rng.choice((2, 3, 4))


# Where a sentence may be cut into two bullets: after a comma, semicolon, colon or dash, or
# before a conjunction that starts a clause.
_CLAUSE = re.compile(r"(?<=[,;:])\s+|\s+(?=(?:and|but|or|which|while|because|so|as|when|where)\s)|\s+[-\u2013\u2014]\s+")
_DANGLING = re.compile(r"\b(?:and|but|or|so|as)[,;:]?$", re.IGNORECASE)  # "red, and" / "so it is hot."
MIN_UNIT_WORDS = 3


def bullet_units(answer: str, n: int) -> Optional[List[str]]:
    """At least `n` pieces of `answer` in order: its sentences, the longest cut at the clause
    boundary nearest its middle until there are `n` (each piece keeps MIN_UNIT_WORDS words).
    None when no more cuts are possible. Cutting at words instead (the first version) taught a
    specialist to wrap text into lines, not to count."""
    units = sentences(answer)
    while len(units) < n:
        best = None  # (words of the unit, -distance from its middle, unit index, cut position, end of cut)
        for i, u in enumerate(units):
            for m in _CLAUSE.finditer(u):
                left, right = u[: m.start()], u[m.end():]
                if min(len(left.split()), len(right.split())) < MIN_UNIT_WORDS or _DANGLING.search(left):
                    continue
                key = (len(u.split()), -abs(m.start() - len(u) / 2), i, m.start(), m.end())
                best = max(best, key) if best else key
        if best is None:
            return None
        _, _, i, a, b = best
        u = units[i]
        units[i: i + 1] = [u[:a].rstrip(",;: "), u[b:]]
    return units


@constraint("bullets",
            "Your answer must contain exactly {n} bullet points. "
            "Use the markdown bullet points such as:\n* This is point 1.",
            "Answer in exactly {n} bullet points, each on its own line starting with '* '.",
            "Give your answer as a markdown list of exactly {n} bullet points.",
            sample=lambda rng, answer: {"n": bullet_count(rng, answer)})
def to_bullets(answer: str, n: int) -> Optional[str]:
    units = bullet_units(answer, n)
    if units is None:
        return None
    return "\n".join("* " + " ".join(g) for g in split_even(units, n))


@constraint("no_commas",
            "In your entire response, refrain from the use of any commas.",
            "Do not use any commas in your answer.",
            "Write your answer without a single comma.")
def drop_commas(answer: str) -> Optional[str]:
    out = re.sub(r"\s*[,\uff0c]\s*", " ", answer)
    out = re.sub(r"(?<=\d) (?=\d{3}\b)", "", out)  # 1,000 -> 1000, not "1 000"
    out = re.sub(r"[ \t]+", " ", out).strip()
    return out or None


def names() -> List[str]:
    return CONSTRAINTS.names()
