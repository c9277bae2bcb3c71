"""Greedy chat generation in left-padded batches, journaled so a killed run resumes.

Every finished batch is appended (and fsync'ed) to a JSONL journal keyed by a hash of
(model fingerprint, prompt, settings); a restart reads the journal, skips what is done,
and ignores a torn last line. Prompts are sorted by length so a batch wastes little on
padding. Generation stops at any of the model's end-of-turn ids (generation_config).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import torch


@dataclass(frozen=True)
class Generation:
    text: str
    finished: bool  # stopped by the model (end of turn, or a new question in "qa"), not by the length limit
    new_tokens: int


# How a question is put to the model. "chat": one user turn through the chat template
# (instruction-tuned models). "qa": plain text for pretrained-only models, which answer
# after "Answer:" but ramble on in a chat template; generation stops at the next question.
FORMATS = {"chat": None, "qa": "Question: {q}\nAnswer:"}
QA_STOP = "\nQuestion:"


def chat_ids(tok, messages: List[Dict[str, str]]) -> List[int]:
    """Prompt ids exactly as mechmerge's probes tokenize a chat prompt."""
    out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def prompt_ids(tok, prompt: str, fmt: str) -> List[int]:
    if fmt == "chat":
        return chat_ids(tok, [{"role": "user", "content": prompt}])
    return list(tok(FORMATS[fmt].format(q=prompt), add_special_tokens=True)["input_ids"])


def prompt_key(fingerprint: str, fmt: str, prompt: str, max_new_tokens: int) -> str:
    return hashlib.sha1(json.dumps([fingerprint, fmt, prompt, max_new_tokens]).encode()).hexdigest()[:20]


def read_journal(path: Path) -> Dict[str, Generation]:
    done: Dict[str, Generation] = {}
    if not path.is_file():
        return done
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                r = json.loads(line)
            except ValueError:  # a line torn by a kill; its batch is simply redone
                continue
            done[r["key"]] = Generation(r["text"], r["finished"], r["new_tokens"])
    return done


def stop_ids(model, tok) -> List[int]:
    eos = model.generation_config.eos_token_id
    ids = eos if isinstance(eos, list) else [eos]
    if tok.eos_token_id is not None:
        ids = ids + [tok.eos_token_id]
    return sorted({int(i) for i in ids if i is not None})


@torch.no_grad()
def generate_cached(model, tok, prompts: Sequence[str], journal: Path, fingerprint: str, max_new_tokens: int,
                    batch_size: int, fmt: str = "chat",
                    log: Callable[[str], None] = print) -> Tuple[Dict[str, Generation], Dict]:
    """(prompt -> greedy answer to it, put in format `fmt`; stats of the generation done now)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown prompt format {fmt!r}; valid: {', '.join(FORMATS)}")
    done = read_journal(journal)
    keys = {p: prompt_key(fingerprint, fmt, p, max_new_tokens) for p in prompts}
    todo = sorted({p for p in prompts if keys[p] not in done}, key=lambda p: (-len(p), p))
    log(f"generation: {len(prompts) - len(todo)} of {len(prompts)} prompts already in {journal.name}")
    stops = stop_ids(model, tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else stops[0]
    model.eval()
    t0, made = time.perf_counter(), 0
    journal.parent.mkdir(parents=True, exist_ok=True)
    if journal.is_file() and journal.stat().st_size:  # a line torn by a kill must not swallow the next one
        with open(journal, "rb+") as jf:
            jf.seek(-1, os.SEEK_END)
            if jf.read(1) != b"\n":
                jf.write(b"\n")
    with open(journal, "a", encoding="utf-8") as jf:
        for start in range(0, len(todo), batch_size):
            batch = todo[start: start + batch_size]
            rows = [prompt_ids(tok, p, fmt) for p in batch]
            T = max(len(r) for r in rows)
            ids = torch.full((len(rows), T), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), T), dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, T - len(r):] = torch.tensor(r)
                mask[i, T - len(r):] = 1
            extra = {"stop_strings": [QA_STOP], "tokenizer": tok} if fmt == "qa" else {}
            gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
                                 max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad,
                                 top_p=None, top_k=None, temperature=None, **extra)
            for p, row in zip(batch, gen[:, T:].tolist()):
                # a row stopped early (stop string, or batch mates still running) is padded with `pad`
                cut = next((j for j, t in enumerate(row) if t in stops or t == pad), None)
                toks = row if cut is None else row[:cut]
                text = tok.decode(toks, skip_special_tokens=True)
                if fmt == "qa" and QA_STOP in text:  # the model moved on to a question of its own
                    text, cut = text[: text.index(QA_STOP)], len(toks)
                g = Generation(text.strip(), cut is not None, len(toks))
                done[keys[p]] = g
                made += g.new_tokens
                jf.write(json.dumps({"key": keys[p], "prompt": p, "text": g.text, "finished": g.finished,
                                     "new_tokens": g.new_tokens}, ensure_ascii=False) + "\n")
            jf.flush()
            os.fsync(jf.fileno())
            dt = time.perf_counter() - t0
            n = min(start + batch_size, len(todo))
            log(f"  {n}/{len(todo)} prompts, {made} tokens, {made / max(dt, 1e-9):.1f} tokens/s, "
                f"{dt / n * (len(todo) - n):.0f}s left")
    dt = time.perf_counter() - t0
    stats = {"prompts_generated": len(todo), "prompts_cached": len(prompts) - len(todo), "new_tokens": made,
             "seconds": dt, "tokens_per_s": made / dt if todo else None, "batch_size": batch_size}
    return {p: done[keys[p]] for p in prompts}, stats
