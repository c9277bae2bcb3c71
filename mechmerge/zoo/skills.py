"""Synthetic string skills for the zoo: one small generator function each.

A skill draws one (prompt, response) pair from a `random.Random`, so a seed fixes the
whole data stream. Prompts are `"<name>:<input>="` and responses are plain text
without the end-of-sequence marker (the trainer appends it). Every character is one
token of the zoo's character tokenizer.

*General* skills are what the base model learns and every specialist must keep (its
copy strings cover lowercase, uppercase and digits so that the base has trained
embeddings for every character a specialist uses). *Specialist* skills differ in the
mechanism they plausibly need (`nature`): routing information between positions,
remapping each token on its own, comparing tokens, or arithmetic and counting.
Inputs are chosen so that copying the input is never the right answer; otherwise a
base model that only copies would score on a specialist skill.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Callable, List, Tuple

from ..registry import Registry

Pair = Tuple[str, str]
LOWER = string.ascii_lowercase
MIXED = string.ascii_lowercase + string.ascii_uppercase + string.digits


@dataclass(frozen=True)
class Skill:
    name: str
    fn: Callable[[random.Random], Pair]
    general: bool  # learned by the base, kept by every specialist
    nature: str  # the kind of computation: copy, routing, remap, compare, arithmetic
    doc: str

    def sample(self, rng: random.Random) -> Pair:
        return self.fn(rng)


SKILLS: Registry[Skill] = Registry("skill")


def skill(name: str, *, nature: str, general: bool = False) -> Callable:
    """Register `fn(rng) -> (prompt, response)` as skill `name`; its docstring is its help."""

    def deco(fn: Callable[[random.Random], Pair]) -> Callable[[random.Random], Pair]:
        SKILLS.register(name)(Skill(name, fn, general, nature, (fn.__doc__ or "").strip()))
        return fn

    return deco


def get(name: str) -> Skill:
    return SKILLS.get(name)


def general_skills() -> List[str]:
    return [n for n in SKILLS if SKILLS.get(n).general]


def specialist_skills() -> List[str]:
    return [n for n in SKILLS if not SKILLS.get(n).general]


def text(rng: random.Random, alphabet: str, lo: int, hi: int) -> str:
    """A random string of lo..hi characters from `alphabet`."""
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


# --- general skills: the base learns these -------------------------------------------

@skill("copy", nature="copy", general=True)
def copy(rng: random.Random) -> Pair:
    """Repeat the input: copy:aB3x= -> aB3x."""
    s = text(rng, MIXED, 1, 10)
    return f"copy:{s}=", s


@skill("twice", nature="copy", general=True)
def twice(rng: random.Random) -> Pair:
    """Repeat the input two times: twice:ab3= -> ab3ab3."""
    s = text(rng, MIXED, 1, 6)
    return f"twice:{s}=", s + s


# --- specialist skills -----------------------------------------------------------------

@skill("rev", nature="routing")
def reverse(rng: random.Random) -> Pair:
    """Reverse the input: rev:abcde= -> edcba (no palindromes)."""
    while True:
        s = text(rng, LOWER, 3, 8)
        if s != s[::-1]:
            return f"rev:{s}=", s[::-1]


@skill("swap", nature="routing")
def swap_pairs(rng: random.Random) -> Pair:
    """Swap adjacent pairs, an odd last char stays: swap:abcde= -> badce."""
    while True:
        s = text(rng, LOWER, 3, 8)
        out = "".join(s[i: i + 2][::-1] for i in range(0, len(s), 2))
        if out != s:
            return f"swap:{s}=", out


@skill("shift", nature="remap")
def caesar(rng: random.Random) -> Pair:
    """Caesar shift by one letter, z wraps to a: shift:abz= -> bca."""
    s = text(rng, LOWER, 3, 8)
    return f"shift:{s}=", "".join(LOWER[(LOWER.index(c) + 1) % 26] for c in s)


@skill("upper", nature="remap")
def upper(rng: random.Random) -> Pair:
    """Uppercase the input: upper:abc= -> ABC."""
    s = text(rng, LOWER, 3, 8)
    return f"upper:{s}=", s.upper()


@skill("sort", nature="compare")
def sort_chars(rng: random.Random) -> Pair:
    """Sort the characters: sort:dbca= -> abcd (never already sorted)."""
    while True:
        s = text(rng, LOWER, 3, 8)
        out = "".join(sorted(s))
        if out != s:
            return f"sort:{s}=", out


@skill("dedup", nature="compare")
def dedup(rng: random.Random) -> Pair:
    """Drop repeated characters, keeping first occurrences: dedup:abcab= -> abc.

    Letters come from a-j so that repeats are common; at least one is guaranteed."""
    while True:
        s = text(rng, LOWER[:10], 4, 9)
        out = "".join(dict.fromkeys(s))
        if out != s:
            return f"dedup:{s}=", out


@skill("add", nature="arithmetic")
def add(rng: random.Random) -> Pair:
    """Add two numbers below 100: add:47+85= -> 132."""
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return f"add:{a}+{b}=", str(a + b)


@skill("count", nature="arithmetic")
def count(rng: random.Random) -> Pair:
    """How often a letter occurs, over letters a-e: count:b:abcbb= -> 3."""
    c = rng.choice(LOWER[:5])
    s = text(rng, LOWER[:5], 3, 9)
    return f"count:{c}:{s}=", str(s.count(c))


# --- latent forms ----------------------------------------------------------------------
# A pretrained language model already holds most of what a fine-tune teaches it; the
# fine-tune mostly binds an instruction to a computation the model can do. The zoo's
# base therefore sees every specialist computation during pretraining, but behind a
# one-character marker instead of its instruction keyword ("!abc=" -> "cba"), and never
# in the instruction format ("rev:abc="), on which it scores ~0%. A specialist then
# learns the binding with a small update, which is what makes fine-tunes mergeable.
LATENT_MARKS = {"rev": "!", "swap": "#", "shift": "$", "upper": "%", "sort": "&", "dedup": "*", "add": "?",
                "count": "@"}


def latent_prompt(name: str, prompt: str) -> str:
    """The latent form of an instruction prompt: 'rev:abc=' -> '!abc='."""
    return LATENT_MARKS[name] + prompt[len(name) + 1:]
