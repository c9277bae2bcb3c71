"""Response-token positions: position j-1 predicts token j, so a response needs something before it."""

import pytest
from transformers import AutoTokenizer

from mechmerge import zoo
from mechmerge.errors import UserError
from mechmerge.probes import Probe, load_probes, make_batches, tokenize_all


@pytest.fixture
def tok():
    return AutoTokenizer.from_pretrained(str(zoo.base("alpha")))


def test_each_target_is_predicted_by_the_position_before_it(tok):
    [t] = tokenize_all([Probe(prompt="rev abc=", response="cba")], tok, None)
    b = make_batches([t], 4, 0)[0]
    assert (b.positions + 1).tolist() == list(range(t.response_start, len(t.ids)))
    assert b.targets.tolist() == t.ids[t.response_start:]


def test_a_chat_probe_with_nothing_before_the_answer_is_refused(tok, tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"messages": [{"role": "assistant", "content": "cba"}]}\n')
    with pytest.raises(UserError, match="p.jsonl:1: 'messages' holds only the assistant's response"):
        load_probes(f)
    # a template that renders nothing before the answer: position -1 would "predict" its first token
    silent = Probe(messages=(("system", ""), ("assistant", "cba")), response="cba", line=3)
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(UserError, match="p.jsonl:3: nothing precedes the response"):
        tokenize_all([silent], tok, None, "p.jsonl")


def test_a_chat_probe_scores_exactly_the_assistant_turn(tok):
    """The prompt is the template up to the generation prompt; the response tokens are what the
    template renders for the assistant's message after it."""
    tok.chat_template = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}<assistant>{% endif %}")
    [t] = tokenize_all([Probe(messages=(("user", "rev abc="), ("assistant", "cba")), response="cba")], tok, None)
    prompt = tok.decode(t.ids[:t.response_start])
    response = tok.decode(t.ids[t.response_start:])
    assert prompt.replace(" ", "").endswith("<assistant>") and "revabc=" in prompt.replace(" ", "")
    assert response.replace(" ", "").startswith("cba") and "rev" not in response


def test_a_base_without_a_chat_template_borrows_its_experts(tmp_path):
    """A pretrained base and its instruction-tuned experts: chat probes use the experts' template."""
    import shutil

    from mechmerge.models.checkpoint import Checkpoint
    from mechmerge.models.load import load_tokenizer

    base, expert = tmp_path / "base", tmp_path / "expert"
    for d in (base, expert):
        shutil.copytree(zoo.base("alpha"), d)
    t = AutoTokenizer.from_pretrained(str(base))
    t.chat_template = None
    for f in ("chat_template.jinja", "chat_template.json"):
        (base / f).unlink(missing_ok=True)
    cfg = base / "tokenizer_config.json"
    import json

    c = json.loads(cfg.read_text())
    c.pop("chat_template", None)
    cfg.write_text(json.dumps(c))
    t = AutoTokenizer.from_pretrained(str(expert))
    t.chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    t.save_pretrained(str(expert))
    assert not AutoTokenizer.from_pretrained(str(base)).chat_template
    tok = load_tokenizer([Checkpoint.open(str(base)), Checkpoint.open(str(expert))])
    assert tok.chat_template == t.chat_template
    assert load_tokenizer([Checkpoint.open(str(base))]).chat_template in (None, "")
