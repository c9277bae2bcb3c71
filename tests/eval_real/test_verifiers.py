"""Verifiers and constraint transforms of the real-model instruction-following data."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `eval.real`

from eval.real import constraints, verifiers  # noqa: E402
from eval.real.verifiers import verify  # noqa: E402
from mechmerge.errors import UserError  # noqa: E402

ANSWERS = [
    "The ocean covers most of the Earth. It holds 97% of its water, and it shapes the weather. "
    "Whales, fish and plankton live there.",
    "Sure! Here are some facts:\n\n1. **Bees** make honey.\n2. They dance to share directions.\n"
    "3. A colony can have 60,000 bees, including one queen.",
    "Chess is a game of strategy that has been played for more than a thousand years across many cultures",
    "Café culture in Paris, Wien and Zürich — naïve but true: people sit, talk, and drink coffee for hours.",
]


@pytest.mark.parametrize("text,ok", [("HELLO, WORLD 42!", True), ("Hello", False), ("1234 !", False),
                                     ("STRASSE ÜBER", True)])
def test_uppercase(text, ok):
    assert verify("uppercase", text) is ok


@pytest.mark.parametrize("text,ok", [("hello, world 42!", True), ("hello World", False), ("12 34", False)])
def test_lowercase(text, ok):
    assert verify("lowercase", text) is ok


@pytest.mark.parametrize("text,ok", [
    ('{"answer": "Paris."}', True),
    ('  {"answer": "multi\\nline"}\n', True),
    ('```json\n{"answer": "fenced"}\n```', True),
    ('{"answer": ""}', False),
    ('{"reply": "wrong key"}', False),
    ('["answer", "a list"]', False),
    ('Here you go: {"answer": "x"}', False),
    ('{"answer": "unterminated}', False),
])
def test_json(text, ok):
    assert verify("json", text, key="answer") is ok


def test_end_phrase():
    phrase = "Is there anything else I can help with?"
    assert verify("end_phrase", f"Paris is the capital. {phrase}\n", phrase=phrase)
    assert verify("end_phrase", f"paris. {phrase.lower()}", phrase=phrase)  # IFEval compares lowercased
    assert not verify("end_phrase", f"{phrase} Paris is the capital.", phrase=phrase)
    assert not verify("end_phrase", "Is there anything else I can help", phrase=phrase)


@pytest.mark.parametrize("text,n,ok", [
    ("* one\n* two\n* three", 3, True),
    ("- one\n- two", 2, True),
    ("Intro line\n* one\n* two", 2, True),  # IFEval counts bullet lines only
    ("* one\n* two\n* three", 2, False),
    ("** bold heading\n* one", 1, True),  # '**' does not start a bullet
    ("1. one\n2. two", 2, False),  # numbered lists are not bullets
])
def test_bullets(text, n, ok):
    assert verify("bullets", text, n=n) is ok


@pytest.mark.parametrize("text,ok", [("No commas here.", True), ("One, two", False), ("全角\uff0c", False),
                                     ("   ", False)])
def test_no_commas(text, ok):
    assert verify("no_commas", text) is ok


def test_registry_names_and_errors():
    assert set(verifiers.names()) >= {"uppercase", "lowercase", "json", "end_phrase", "bullets", "no_commas"}
    assert constraints.names() == verifiers.names()  # every constraint has a verifier and vice versa
    with pytest.raises(UserError, match="did you mean 'no_commas'"):
        verify("no_comma", "x")
    with pytest.raises(ValueError, match="registered twice"):
        verifiers.verifier("uppercase")(lambda r: True)


@pytest.mark.parametrize("name", ["uppercase", "lowercase", "json", "end_phrase", "bullets", "no_commas"])
def test_transforms_satisfy_their_verifier(name):
    c = constraints.CONSTRAINTS.get(name)
    for i, answer in enumerate(ANSWERS):
        for seed in range(5):
            rng = random.Random(f"{seed}:{i}")
            kw = c.sample(rng, answer)
            out = constraints.apply(name, answer, kw)  # raises if the verifier rejects it
            if out is None:  # only bullets refuses, for an answer with too few clauses for n
                assert name == "bullets" and constraints.bullet_units(answer, kw["n"]) is None
                continue
            assert verify(name, out, **kw)
            text = c.instruction(rng, kw)
            assert text and "{" not in text.replace('{"', "")  # every placeholder was filled


def test_transforms_keep_the_content():
    import json

    a = ANSWERS[0]
    assert json.loads(constraints.apply("json", a, {"key": "answer"}))["answer"] == a
    assert constraints.apply("lowercase", a, {}) == a.lower()
    assert constraints.apply("no_commas", "Big, bigger, 60,000 bees.", {}) == "Big bigger 60000 bees."
    bullets = constraints.apply("bullets", ANSWERS[1], {"n": 3})
    assert bullets.count("\n* ") == 2 and "**" not in bullets and "1." not in bullets
    words = lambda s: s.replace("* ", " ").replace(",", "").split()  # noqa: E731
    four = constraints.apply("bullets", ANSWERS[0], {"n": 4})  # three sentences, one cut at its comma
    assert len(four.splitlines()) == 4 and words(four) == words(ANSWERS[0])
    assert constraints.apply("bullets", ANSWERS[2], {"n": 4}) is None  # one clause: no honest four bullets
    ended = constraints.apply("end_phrase", ANSWERS[2], {"phrase": "Hope this helps!"})
    assert ended.endswith("cultures. Hope this helps!")


def test_untransformable_answers_are_refused():
    assert constraints.apply("bullets", "Too short.", {"n": 4}) is None
    assert constraints.apply("uppercase", "1234 !", {}) is None
    assert constraints.apply("no_commas", ", , ,", {}) is None


def test_questions_are_topic_disjoint_and_spares_only_append():
    from eval.real.topics import SPLITS, build_questions

    sizes = {"train": 200, "score": 32, "dev": 48, "test": 64}
    qs = build_questions(sizes, seed=0, spare=0.12)
    assert [q.id for q in qs] == [q.id for q in build_questions(sizes, seed=0, spare=0.12)]  # deterministic
    assert len({q.text for q in qs}) == len(qs) == 224 + 35 + 53 + 71
    topics = {s: {q.topic for q in qs if q.split == s} for s in SPLITS}
    assert not topics["train"] & (topics["dev"] | topics["test"]) and not topics["dev"] & topics["test"]
    assert topics["score"] <= topics["train"]
    more = build_questions(sizes, seed=0, spare=1.0)
    for s in SPLITS:  # more spares keep every question (and its cached answer) where it was
        ids = [q.id for q in qs if q.split == s]
        assert [q.id for q in more if q.split == s][: len(ids)] == ids
