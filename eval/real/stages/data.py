"""Stage `data`: instruction-following data for one specialist per constraint.

1. Plain questions on varied topics (`topics.py`), split topic-disjointly into train,
   score (Weight Patching probes), dev and test, with a few spares per split.
2. The base model's own greedy answer to each plain question (chat template, journaled,
   so a killed run resumes where it stopped). An answer cut by the token limit is
   trimmed to its last full sentence, and cut back further, sentence by sentence, until
   every constraint's rewrite of it fits `data.max_response_tokens` (88: the evaluation
   generates 96); answers too short to rewrite are dropped.
3. For every constraint: prompt = question + the constraint stated in words; response =
   the base's answer rewritten to satisfy it (verified). The same questions serve every
   constraint, so specialists differ only in the constraint.

Artifact (mechmerge probe format, one `{"messages": [...], "meta": {...}}` per line):
    <constraint>/{train,score,dev,test}.jsonl
    plain/{train,score,dev,test}.jsonl   the base's own answers, for quality retention (in the
                                         form they were asked: chat messages, or "qa" prompt/response)
    questions.jsonl                      every question, its split, answer and fate
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch

from mechmerge.models.checkpoint import Checkpoint
from mechmerge.models.gguf import read_record
from mechmerge.models.load import load_model, load_tokenizer
from mechmerge.probes import Probe, tokenize_probe

from .. import constraints, verifiers
from ..generate import FORMATS, Generation, generate_cached
from ..runner import Context, stage
from ..topics import SPLITS, Question, build_questions

MIN_WORDS = 20  # enough to split into 4 bullets of several words each
_SENTENCE_END = re.compile(r"[.!?](?=[\s\"')\]\u201d\u2019]|$)")
_LIST_NUMBER = re.compile(r"\s*(?:\d+|[A-Za-z])[.)]")
_MARKER = re.compile(r"^\s*(?:\d+[.)]|[*\-+])\s*")
_TRAILING_MARKERS = re.compile(r"(?:\s*(?:\d+[.)]|[*\-+]))+\s*$")


def clean_answer(g: Generation) -> Optional[str]:
    """The answer up to its first repeated sentence, trimmed to its last full sentence when the
    length limit cut it; None if unusable (too short, or undecodable bytes)."""
    text = cut_repetition(g.text.strip())
    if not g.finished and text == g.text.strip():
        # the last sentence end that is not a list marker ("2." on a line of its own)
        ends = [m.end() for m in _SENTENCE_END.finditer(text)
                if not _LIST_NUMBER.fullmatch(text[: m.end()].rsplit("\n", 1)[-1])]
        if not ends:
            return None
        text = text[: ends[-1]].rstrip()
    if "\ufffd" in text or len(text.split()) < MIN_WORDS:
        return None
    return text


def cut_repetition(text: str) -> str:
    """`text` before the first sentence that says again what an earlier one said (small
    models loop under greedy decoding; a loop is not an answer worth imitating)."""
    seen, start = set(), 0
    for m in _SENTENCE_END.finditer(text):
        sentence = _MARKER.sub("", " ".join(text[start: m.end()].split()).lower())  # "2. It is." == "It is."
        if sentence in seen:
            return _TRAILING_MARKERS.sub("", text[:start]).rstrip()
        if sentence:  # a bare list number ("2.") is not a sentence
            seen.add(sentence)
        start = m.end()
    return text


def fit_answer(text: str, too_long: Callable[[str], bool]) -> Optional[str]:
    """`text` cut back sentence by sentence until `too_long` is false; None when that leaves
    fewer than MIN_WORDS words (a reference the evaluation cannot let a model finish is no
    reference: SmolLM2's tokenizer splits capitals finely, so half of its uppercase test answers
    were longer than the 96 generated tokens and every merge was cut before their end)."""
    while too_long(text):
        ends = [m.end() for m in _SENTENCE_END.finditer(text)
                if m.end() < len(text) and not _LIST_NUMBER.fullmatch(text[: m.end()].rsplit("\n", 1)[-1])]
        if not ends:
            return None
        text = _TRAILING_MARKERS.sub("", text[: ends[-1]]).rstrip()
        if len(text.split()) < MIN_WORDS:
            return None
    return text


def kwargs_for(seed: int, name: str, qid: str, answer: str) -> tuple[random.Random, Dict[str, Any]]:
    rng = random.Random(f"{seed}:{name}:{qid}")
    return rng, constraints.CONSTRAINTS.get(name).sample(rng, answer)


def write_jsonl(path: Path, rows: List[Dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def chat(prompt: str, response: str) -> List[Dict[str, str]]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


def plain_probe(question: str, answer: str, fmt: str, ended: bool) -> Dict[str, Any]:
    """A probe line for the base's answer: chat messages, or the exact "qa" prompt it completed.
    An answer that did not end where the base ended it (cut by the length limit, or shortened
    here) is scored without the end-of-turn marker: the base never chose to stop there, and a
    fine-tune taught to stop after such answers would otherwise gain "quality" from it."""
    if fmt == "chat":
        return {"messages": chat(question, answer), **({} if ended else {"end": False})}
    return {"prompt": FORMATS[fmt].format(q=question), "response": " " + answer}


def response_tokens(tok, prompt: str, response: str) -> int:
    """Tokens a chat response takes, its end-of-turn marker included (what a model must generate)."""
    t = tokenize_probe(Probe(messages=(("user", prompt), ("assistant", response))), tok)
    return len(t.ids) - t.response_start


@stage("data", artifact="data", requires=("import",), store=("*",))
def build_data(ctx: Context, out: Path) -> Dict[str, Any]:
    """Templated instructions x constraints; responses are the base's own answers, rewritten."""
    seed = ctx.param("data.seed", 0)
    sizes = {s: ctx.param(f"data.n_{s}", d) for s, d in zip(SPLITS, (200, 32, 48, 64))}
    spare = ctx.param("data.spare", ctx.model.spare)  # extra questions per split, for answers that are dropped
    fmt = ctx.param("data.prompt_format", ctx.model.prompt_format)
    max_new = ctx.param("data.max_new_tokens", 64)
    # every written response must fit the evaluation's generation limit (96) with room to spare
    max_response = ctx.param("data.max_response_tokens", 88)
    batch_size = ctx.param("data.batch_size", ctx.model.gen_batch_size)
    names = [n for n in ctx.param("data.constraints", ",".join(constraints.names())).split(",") if n]
    for n in names:
        constraints.CONSTRAINTS.get(n)

    questions = build_questions(sizes, seed, spare)

    base = ctx.artifact("import")
    ckpt = Checkpoint.open(str(base), label="base")
    torch.manual_seed(seed)
    model = load_model(ckpt, torch.device("cpu"), torch.float32)
    tok = load_tokenizer([ckpt])
    record = read_record(base) or {}
    fingerprint = f"{record.get('source', {}).get('sha256', str(base))}:{record.get('options', {}).get('dtype')}"
    journal = ctx.work("data") / "generations.jsonl"
    answers, gen_stats = generate_cached(model, tok, [q.text for q in questions], journal, fingerprint, max_new,
                                         batch_size, fmt, log=lambda m: ctx.log(f"  {m}"))
    del model

    def too_long(q: Question, text: str) -> bool:
        for n in names:
            rng, kw = kwargs_for(seed, n, q.id, text)
            response = constraints.apply(n, text, kw)
            if response is not None and response_tokens(tok, q.text, response) > max_response:
                return True
        return False

    clean = {}
    for q in questions:
        text = clean_answer(answers[q.text])
        clean[q.id] = None if text is None else fit_answer(text, lambda t, q=q: too_long(q, t))
    # the base's own end: it stopped by itself and nothing was cut away afterwards
    ended = {q.id: answers[q.text].finished and clean[q.id] == answers[q.text].text.strip() for q in questions}
    kept: Dict[str, List[Question]] = {s: [] for s in SPLITS}
    fate: Dict[str, str] = {}
    for q in questions:
        text = clean[q.id]
        if text is None:
            fate[q.id] = "dropped: unusable answer"
        elif any(constraints.apply(n, text, kwargs_for(seed, n, q.id, text)[1]) is None for n in names):
            fate[q.id] = "dropped: a constraint cannot rewrite it"
        elif len(kept[q.split]) >= sizes[q.split]:
            fate[q.id] = "spare"
        else:
            kept[q.split].append(q)
            fate[q.id] = "used"
    short = {s: (len(kept[s]), sizes[s]) for s in SPLITS if len(kept[s]) < sizes[s]}
    if short:
        raise RuntimeError(f"too few usable answers (have, need) per split: {short}; raise data.spare")

    base_pass: Dict[str, float] = {}
    for n in names:
        passed = 0
        for s in SPLITS:
            rows = []
            for q in kept[s]:
                answer = clean[q.id]
                rng, kw = kwargs_for(seed, n, q.id, answer)
                prompt = f"{q.text} {constraints.CONSTRAINTS.get(n).instruction(rng, kw)}"
                rows.append({"messages": chat(prompt, constraints.apply(n, answer, kw)),
                             "meta": {"id": q.id, "topic": q.topic, "split": s, "constraint": n, "kwargs": kw}})
                passed += verifiers.verify(n, answer, **kw)
            write_jsonl(out / n / f"{s}.jsonl", rows)
        base_pass[n] = passed / sum(sizes.values())
    for s in SPLITS:  # in the form the answers were asked in, so their log-probability is the base's own
        write_jsonl(out / "plain" / f"{s}.jsonl", [
            {**plain_probe(q.text, clean[q.id], fmt, ended[q.id]),
             "meta": {"id": q.id, "topic": q.topic, "split": s, "format": fmt, "finished": answers[q.text].finished,
                      "ended": ended[q.id]}}
            for q in kept[s]])
    write_jsonl(out / "questions.jsonl", [
        {"id": q.id, "topic": q.topic, "template": q.template, "split": q.split, "question": q.text,
         "generated": answers[q.text].text, "answer": clean[q.id], "finished": answers[q.text].finished,
         "new_tokens": answers[q.text].new_tokens, "fate": fate[q.id]} for q in questions])

    used = [q for s in SPLITS for q in kept[s]]
    return {
        "constraints": names, "splits": {s: len(kept[s]) for s in SPLITS}, "prompt_format": fmt,
        "questions": len(questions), "fates": dict(Counter(fate.values())),
        "answers_finished": sum(answers[q.text].finished for q in used) / len(used),
        "answers_ended": sum(ended[q.id] for q in used) / len(used),
        "answer_words_mean": sum(len(clean[q.id].split()) for q in used) / len(used),
        "base_plain_answer_passes": base_pass,  # share of plain answers that already satisfy each constraint
        "generation": gen_stats,
    }
