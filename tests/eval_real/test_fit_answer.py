"""The data stage's answer fitting (`fit_answer`: whole sentences cut from the end until the
rewrites fit) and the bullets constraint's count (2, 3 or 4, whatever the answer's length)."""

from __future__ import annotations

import random
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root, for `eval.real`

from eval.real import constraints, verifiers  # noqa: E402


@pytest.fixture(scope="module")
def data():
    from eval.real.stages import data

    return data


def sentence(i: int, words: int = 10) -> str:
    return " ".join([f"s{i}"] + ["word"] * (words - 2) + ["end"]) + "."


def text_of(n: int, words: int = 10) -> str:
    return " ".join(sentence(i, words) for i in range(n))


def longer_than(limit: int):
    asked = []

    def too_long(text: str) -> bool:
        asked.append(text)
        return len(text.split()) > limit

    return too_long, asked


def test_an_answer_that_fits_is_returned_unchanged(data):
    text = text_of(4)
    too_long, asked = longer_than(40)
    assert data.fit_answer(text, too_long) == text and asked == [text]


@pytest.mark.parametrize("limit,kept", [(39, 3), (35, 3), (29, 2), (20, 2)])
def test_whole_sentences_are_cut_from_the_end_until_it_fits(data, limit, kept):
    assert data.MIN_WORDS == 20  # the cases below assume it
    too_long, asked = longer_than(limit)
    assert data.fit_answer(text_of(4), too_long) == text_of(kept)
    assert asked == [text_of(n) for n in range(4, kept - 1, -1)]  # one sentence at a time


def test_too_few_words_left_or_no_sentence_end_is_none(data):
    too_long, _ = longer_than(19)  # two sentences are 20 words: MIN_WORDS; one is too few
    assert data.fit_answer(text_of(4), too_long) is None
    assert data.fit_answer(sentence(0, 40), lambda t: True) is None  # one sentence: nothing to cut
    assert data.fit_answer(" ".join(["word"] * 40), lambda t: True) is None  # no sentence end at all


def test_list_numbers_are_not_sentence_ends(data):
    """ "2." alone on a line is a list marker: the cut does not stop after it, and leaves no bare marker."""
    text = f"{sentence(0)}\n1. {sentence(1)}\n2. {sentence(2)}"
    out = data.fit_answer(text, lambda t: "s2" in t)
    assert out == f"{sentence(0)}\n1. {sentence(1)}"


def test_a_sentence_ending_before_a_closing_quote_is_cut_whole(data):
    text = f'{sentence(0)} {sentence(1)} He said "{sentence(2)}" {sentence(3)}'
    out = data.fit_answer(text, lambda t: "s3" in t)
    assert out is not None and "s3" not in out and out.startswith(f"{sentence(0)} {sentence(1)} He said")


def test_bullet_counts_are_even_and_ignore_the_answer():
    short, long = "One short sentence here with a few words.", text_of(8)
    counts = Counter()
    for seed in range(3000):
        n = constraints.bullet_count(random.Random(seed), short)
        assert n == constraints.bullet_count(random.Random(seed), long)
        assert constraints.CONSTRAINTS.get("bullets").sample(random.Random(seed), short) == {"n": n}
        counts[n] += 1
    assert set(counts) == {2, 3, 4}
    assert all(abs(c / 3000 - 1 / 3) < 0.04 for c in counts.values()), counts


def test_four_bullets_of_a_two_sentence_answer_are_cut_at_clauses():
    answer = ("Bees make honey from the nectar of flowers, and they store it in wax cells. "
              "A colony can hold sixty thousand bees, yet it has only one queen.")
    out = constraints.apply("bullets", answer, {"n": 4})  # verified inside
    assert out.splitlines() == ["* Bees make honey from the nectar of flowers", "* and they store it in wax cells.",
                                "* A colony can hold sixty thousand bees", "* yet it has only one queen."]
    # three bullets: only the longer sentence is cut, at the boundary nearest its middle
    assert constraints.apply("bullets", answer, {"n": 3}).splitlines()[:2] == [
        "* Bees make honey from the nectar of flowers", "* and they store it in wax cells."]


def test_an_answer_without_enough_clauses_cannot_be_cut_into_bullets():
    """Cutting at arbitrary words taught a specialist to wrap lines, not to count: such an answer
    is refused (the data stage then drops the question)."""
    answer = "The first sentence has many words in it here. The second one also has many words in it now."
    assert constraints.bullet_units(answer, 2) is not None
    assert constraints.bullet_units(answer, 3) is None and constraints.apply("bullets", answer, {"n": 3}) is None
    # a cut never leaves a piece under MIN_UNIT_WORDS words, nor a conjunction dangling at a piece's end
    assert constraints.bullet_units("It is red and hot.", 2) is None
    assert constraints.bullet_units("It is red, and so it is hot.", 2) == ["It is red", "and so it is hot."]
