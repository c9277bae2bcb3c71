"""Greedy generation: batched left padding gives what one-at-a-time generation gives."""

import random

import pytest
import torch

from mechmerge.evaluate.generate import exact_match, greedy_generate, left_pad, normalize
from mechmerge.zoo import SHIPPED, experts
from mechmerge.zoo.build import ModelSpec, load_model
from mechmerge.zoo.skills import get
from mechmerge.zoo.tokenizer import build_char_tokenizer


def prompts(n=12):
    rng = random.Random(0)
    names = ["copy", "twice", "rev", "sort", "add", "shift"]
    return [get(names[i % len(names)]).sample(rng)[0] for i in range(n)]  # mixed lengths


@pytest.fixture(scope="module")
def trained():
    zoo = SHIPPED / "alpha"
    if not (zoo / "zoo.json").is_file():
        pytest.skip("shipped zoo missing (test_shipped fails for it)")
    return load_model(experts(zoo)["rev"])


@pytest.fixture(scope="module")
def random_model():
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(ModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2).config()).eval()


@pytest.mark.parametrize("which", ["trained", "random_model"])
def test_batched_equals_one_at_a_time(which, request):
    model = request.getfixturevalue(which)
    tok = build_char_tokenizer()
    ps = prompts()
    one = [greedy_generate(model, tok, [p], 12)[0] for p in ps]
    assert greedy_generate(model, tok, ps, 12, batch_size=5) == one
    assert greedy_generate(model, tok, ps, 12, batch_size=64) == one


def test_stops_at_eos_and_is_right(trained):
    tok = build_char_tokenizer()
    out = greedy_generate(trained, tok, ["rev:abcdef=", "copy:Hello7=", "twice:ab="], 20)
    assert out == ["fedcba", "Hello7", "abab"]


def test_left_pad():
    ids, mask = left_pad([[1, 5, 6], [1, 7]], 0)
    assert ids.tolist() == [[1, 5, 6], [0, 1, 7]] and mask.tolist() == [[1, 1, 1], [0, 1, 1]]


def test_normalize_and_exact_match():
    assert normalize("  ab c\n") == "ab c"
    assert exact_match(" ABC", "ABC") and not exact_match("abc", "ABC") and not exact_match("a bc", "abc")
