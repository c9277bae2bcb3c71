"""Chat probes end at the assistant turn's end-of-turn marker: the marker is scored (stopping is
behavior), what the template renders after it is not, and `"end": false` leaves the marker out."""

from __future__ import annotations

import json

import pytest

from mechmerge.errors import UserError
from mechmerge.probes import Probe, load_probes, make_batches, parse_probe_line, tokenize_all, tokenize_probe

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHARS = [chr(c) for c in range(32, 127)] + ["\n"]
CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def chatml_tokenizer(named: bool):
    """One token per character plus ChatML's markers. `named`: the markers are the tokenizer's
    additional special tokens (in all_special_ids); otherwise they are only added tokens marked
    special (as Gemma's <end_of_turn> is)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    if named:
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                       additional_special_tokens=SPECIALS[1:])
    else:
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
        fast.add_tokens([AddedToken(t, special=True) for t in SPECIALS[1:]])
        assert vocab["<|im_end|>"] not in fast.all_special_ids
        assert fast.added_tokens_decoder[vocab["<|im_end|>"]].special
    fast.chat_template = CHATML
    return fast


IM_END, NEWLINE = SPECIALS.index("<|im_end|>"), len(SPECIALS) + CHARS.index("\n")


def chat(answer="ok, done.", end=True):
    return Probe(messages=(("user", "say\nit"), ("assistant", answer)), response=answer, end=end)


@pytest.mark.parametrize("named", [True, False], ids=["all_special_ids", "added_tokens_decoder"])
def test_the_response_ends_with_the_marker_and_nothing_after_it(named):
    tok = chatml_tokenizer(named)
    t = tokenize_probe(chat(), tok)
    response = t.ids[t.response_start:]
    assert tok.decode(t.prompt_ids) == "<|im_start|>user\nsay\nit<|im_end|>\n<|im_start|>assistant\n"
    assert response[-1] == IM_END and NEWLINE not in response
    assert tok.decode(response) == "ok, done.<|im_end|>"
    # the full rendering had the newline after the marker: it was cut, not never there
    full = tok.apply_chat_template([{"role": r, "content": c} for r, c in chat().messages], tokenize=False)
    assert full.endswith("<|im_end|>\n")


@pytest.mark.parametrize("named", [True, False], ids=["all_special_ids", "added_tokens_decoder"])
def test_end_false_stops_before_the_marker(named):
    tok = chatml_tokenizer(named)
    t = tokenize_probe(chat(end=False), tok)
    assert tok.decode(t.ids[t.response_start:]) == "ok, done."
    assert IM_END not in t.ids[t.response_start:]
    with_end = tokenize_probe(chat(), tok)
    assert with_end.ids == t.ids + [IM_END] and with_end.response_start == t.response_start
    # a newline inside the answer is the answer's, and stays
    t = tokenize_probe(chat("line one.\nline two.", end=False), tok)
    assert tok.decode(t.ids[t.response_start:]) == "line one.\nline two."


def test_the_batch_scores_the_marker_but_not_the_next_turn():
    tok = chatml_tokenizer(True)
    items = tokenize_all([chat(), chat(end=False)], tok, None)
    b = make_batches(items, 2, tok.pad_token_id)[0]
    targets = [b.targets[b.probe_index == i].tolist() for i in (0, 1)]
    assert tok.decode(targets[0]) == "ok, done.<|im_end|>" and tok.decode(targets[1]) == "ok, done."


def test_a_template_without_special_tokens_keeps_everything():
    tok = chatml_tokenizer(True)
    tok.chat_template = ("{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}[assistant] {% endif %}")
    t = tokenize_probe(chat(), tok)
    assert tok.decode(t.ids[t.response_start:]) == "ok, done.\n"


def test_end_is_parsed_from_chat_lines_only(tmp_path):
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert parse_probe_line(json.dumps({"messages": msgs, "end": False}), "f:1").end is False
    assert parse_probe_line(json.dumps({"messages": msgs}), "f:1").end is True
    f = tmp_path / "p.jsonl"
    f.write_text(json.dumps({"messages": msgs}) + "\n" + json.dumps({"prompt": "q", "response": "a", "end": False}))
    with pytest.raises(UserError, match=r"p\.jsonl:2: 'end' applies to chat probes \('messages'\) only"):
        load_probes(f)
    for bad in ("no", 0, None, [False]):
        f.write_text("\n" + json.dumps({"messages": msgs, "end": bad}) + "\n")
        with pytest.raises(UserError, match=r"p\.jsonl:2: 'end' must be true or false"):
            load_probes(f)


def test_an_unknown_character_in_the_answer_is_not_the_end_of_the_turn():
    from mechmerge.zoo.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()  # the zoo's tokenizer: characters outside ASCII are <unk>
    answer = "a na\u00efve answer."
    t = tokenize_probe(Probe(messages=(("user", "q"), ("assistant", answer)), response=answer), tok)
    assert tok.decode(t.ids[t.response_start:]) == "a na<unk>ve answer.<|end|>"
