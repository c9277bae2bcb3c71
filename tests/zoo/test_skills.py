import random

import pytest

from mechmerge.errors import UserError
from mechmerge.probes import Probe, tokenize_probe
from mechmerge.zoo import skills
from mechmerge.zoo.build import ZOOS, draw_splits, stream
from mechmerge.zoo.tokenizer import build_char_tokenizer, char_ids
from mechmerge.zoo.train import collate, encode_pair

ALL = list(skills.SKILLS)


def test_registry():
    assert set(skills.general_skills()) >= {"copy"}
    assert len(skills.specialist_skills()) >= 8
    with pytest.raises(UserError, match="did you mean 'sort'"):
        skills.get("srot")
    with pytest.raises(ValueError, match="twice"):
        skills.skill("rev", nature="routing")(lambda rng: ("", ""))


@pytest.mark.parametrize("name", ALL)
def test_deterministic_and_well_formed(name):
    draw = lambda seed: [skills.get(name).sample(random.Random(seed)) for _ in range(50)]  # noqa: E731
    assert draw(3) == draw(3)
    assert draw(3) != draw(4)
    for prompt, response in draw(5):
        assert prompt.startswith(name + ":") and prompt.endswith("=")
        assert response and response == response.strip()
        assert len(prompt) + len(response) + 2 <= 64
        if not skills.get(name).general:
            # a base that copies the input must not be right by accident
            assert response != prompt[len(name) + 1: -1]


class Scripted(random.Random):
    """Draws the characters of a fixed string, so a skill's answer can be checked by hand."""

    def __init__(self, s: str):
        super().__init__(0)
        self.s, self.chars = s, iter(s)

    def randint(self, lo, hi):
        return len(self.s)

    def choice(self, seq):
        return next(self.chars)


def test_known_answers():
    ans = {"rev": ("abc", "cba"), "swap": ("abcde", "badce"), "shift": ("abz", "bca"), "upper": ("abc", "ABC"),
           "sort": ("dbca", "abcd"), "dedup": ("abcab", "abc"), "copy": ("aB3", "aB3"), "twice": ("a1", "a1a1")}
    for name, (x, y) in ans.items():
        assert skills.get(name).sample(Scripted(x)) == (f"{name}:{x}=", y)
    p, r = skills.get("add").sample(random.Random(0))
    a, b = p[4:-1].split("+")
    assert int(r) == int(a) + int(b)
    p, r = skills.get("count").sample(random.Random(0))
    _, c, s = p[:-1].split(":")
    assert int(r) == s.count(c)


@pytest.mark.parametrize("name", ALL)
def test_splits_disjoint_and_held_out(name):
    splits = draw_splits(name, 7, (32, 64, 128))
    assert draw_splits(name, 7, (32, 64, 128)) == splits
    assert [len(v) for v in splits.values()] == [32, 64, 128]
    prompts = [p for v in splits.values() for p, _ in v]
    assert len(set(prompts)) == len(prompts)
    sample = stream([name], [1.0], set(prompts), 64)
    rng = random.Random(0)
    assert not {sample(rng)[0] for _ in range(2000)} & set(prompts)


def test_stream_refuses_held_out_even_when_most_is_held_out():
    held = {f"add:{a}+{b}=" for a in range(100) for b in range(100) if (a + b) % 10}
    sample = stream(["add"], [1.0], held, 64)
    rng = random.Random(1)
    assert all(sample(rng)[0] not in held for _ in range(200))


def test_char_ids_match_the_tokenizer():
    tok = build_char_tokenizer()
    for name in ALL:
        p, r = skills.get(name).sample(random.Random(2))
        t = tokenize_probe(Probe(prompt=p, response=r), tok)
        ids, start = encode_pair(p, r)
        assert ids[:-1] == t.ids and start == t.response_start and ids[-1] == tok.eos_token_id
        assert char_ids(r) == tok(r, add_special_tokens=False)["input_ids"]
        assert tok.decode(char_ids(p + r)) == p + r


def test_collate_targets_are_response_and_eos():
    ids, tgt = collate([("rev:ab=", "ba"), ("copy:abcdef=", "abcdef")])
    assert ids.shape == tgt.shape == (2, 1 + 12 + 6 + 1)
    row = tgt[0].tolist()
    assert [t for t in row if t != -100] == char_ids("ba") + [2]
    assert row.index(char_ids("b")[0]) == len("rev:ab=")  # predicted from the '=' position
    assert ids[0, 1 + 7 + 2 + 1:].eq(0).all()  # right padding


def test_zoos_are_valid_and_differ():
    for spec in ZOOS.values():
        spec.validate()
    a, b = ZOOS["alpha"], ZOOS["beta"]
    assert not set(a.specialists) & set(b.specialists) and a.seed != b.seed
    assert len(a.specialists) == len(b.specialists) == 4


def test_lr_schedule():
    from mechmerge.zoo.train import TrainConfig, lr_at

    cfg = TrainConfig(steps=1000, lr=1.0, warmup=100, min_lr=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.01) and lr_at(99, cfg) == pytest.approx(1.0)
    assert lr_at(100, cfg) == pytest.approx(1.0) and lr_at(999, cfg) == pytest.approx(0.1, abs=1e-4)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(100, 999))


def test_training_lowers_the_loss():
    import torch
    from transformers import LlamaForCausalLM

    from mechmerge.zoo.build import ModelSpec
    from mechmerge.zoo.train import TrainConfig, train

    torch.manual_seed(0)
    model = LlamaForCausalLM(ModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2).config())
    losses = train(model, skills.get("copy").sample, TrainConfig(steps=60, lr=3e-3, batch_size=16, warmup=10))
    assert sum(losses[-10:]) < 0.9 * sum(losses[:10])  # deterministic: seeded data and init
    assert not model.training
