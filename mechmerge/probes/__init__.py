"""Probe sets: JSONL files of prompts with reference responses, tokenized exactly.

A line is `{"prompt": str, "response": str}` or `{"messages": [{"role", "content"}, ...]}`
(chat; the last turn must be the assistant's and is the response).

Token positions are exact by construction: the prompt is tokenized as the model sees
it at generation time (with the tokenizer's special tokens, or through the chat
template with the generation prompt) and the response is tokenized *without* special
tokens and appended. So there is one BOS, and the first response token is never
merged into or lost at the prompt boundary. For chat probes the response includes the
template's end-of-turn marker, because stopping is part of the behavior, and nothing the
template renders after it (a newline before the next turn is not something the model
chooses). `"end": false` on a chat line leaves the marker out too: for a reference answer
that was cut short, whose end the model should not be asked to predict.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence

import torch

from ..errors import UserError


@dataclass(frozen=True)
class Probe:
    prompt: str = ""
    response: str = ""
    messages: Optional[tuple] = None  # tuple of (role, content) pairs for chat probes
    line: int = 0
    end: bool = True  # chat probes: score the end-of-turn marker after the response


@dataclass(frozen=True)
class Tokenized:
    ids: List[int]
    response_start: int  # ids[response_start:] are the response tokens

    @property
    def prompt_ids(self) -> List[int]:
        return self.ids[: self.response_start]


def load_probes(path: str | Path, limit: Optional[int] = None) -> List[Probe]:
    """Parse a probes JSONL file; errors name the file and line."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"probes file {str(p)!r} not found")
    probes: List[Probe] = []
    try:
        with open(p, encoding="utf-8") as f:
            for lineno, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                probes.append(parse_probe_line(raw, f"{p}:{lineno}", lineno))
                if limit is not None and len(probes) >= limit:
                    break
    except UnicodeDecodeError:
        raise UserError(_not_utf8(p)) from None
    if not probes:
        raise UserError(f"probes file {str(p)!r} is empty")
    return probes


def _not_utf8(p: Path) -> str:
    """Where a probes file stops being UTF-8 (text mode decodes ahead, so find the line here)."""
    for lineno, raw in enumerate(p.read_bytes().splitlines(), 1):
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            return (f"{p}:{lineno}: not UTF-8 text (byte {raw[e.start]:#04x} at column {e.start + 1}); "
                    "save the probes file as UTF-8")
    return f"probes file {str(p)!r} is not UTF-8 text; save it as UTF-8"


def parse_probe_line(raw: str, where: str, lineno: int = 0) -> Probe:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: invalid JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object with 'prompt' and 'response' or 'messages'")
    if "messages" in obj:
        msgs = obj["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise UserError(f"{where}: 'messages' must be a non-empty list")
        pairs = []
        for i, m in enumerate(msgs):
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise UserError(f"{where}: messages[{i}] needs string 'role' and 'content'")
            pairs.append((m["role"], m["content"]))
        if pairs[-1][0] != "assistant":
            raise UserError(f"{where}: the last message must be the assistant's response")
        if not pairs[-1][1].strip():
            raise UserError(f"{where}: the assistant response is empty")
        if len(pairs) < 2:
            raise UserError(f"{where}: 'messages' holds only the assistant's response; put the user's message "
                            "(the prompt it answers) before it")
        end = obj.get("end", True)
        if not isinstance(end, bool):
            raise UserError(f"{where}: 'end' must be true or false")
        return Probe(messages=tuple(pairs), response=pairs[-1][1], line=lineno, end=end)
    if "end" in obj:
        raise UserError(f"{where}: 'end' applies to chat probes ('messages') only: a plain response has no "
                        "end-of-turn marker to leave out")
    for key in ("prompt", "response"):
        if key not in obj:
            raise UserError(f"{where}: missing key {key!r} (need 'prompt' and 'response', or 'messages')")
        if not isinstance(obj[key], str):
            raise UserError(f"{where}: {key!r} must be a string")
    if not obj["response"].strip():
        raise UserError(f"{where}: empty response")
    return Probe(prompt=obj["prompt"], response=obj["response"], line=lineno)


def _ids(out) -> List[int]:
    # apply_chat_template returns a list, or a BatchEncoding/dict in newer transformers
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def tokenize_probe(probe: Probe, tokenizer) -> Tokenized:
    if probe.messages is not None:
        if not getattr(tokenizer, "chat_template", None):
            raise UserError(f"probe line {probe.line}: chat 'messages' given but the tokenizer has no chat template")
        msgs = [{"role": r, "content": c} for r, c in probe.messages]
        prompt_ids = _ids(tokenizer.apply_chat_template(msgs[:-1], add_generation_prompt=True, tokenize=True))
        full_ids = _ids(tokenizer.apply_chat_template(msgs, tokenize=True))
        if full_ids[: len(prompt_ids)] == prompt_ids and len(full_ids) > len(prompt_ids):
            return Tokenized(_cut_turn(full_ids, len(prompt_ids), tokenizer, probe.end), len(prompt_ids))
        # Template renders the prompt differently once the answer follows: fall back to
        # the rendered text after the generation prompt.
        prompt_text = tokenizer.apply_chat_template(msgs[:-1], add_generation_prompt=True, tokenize=False)
        full_text = tokenizer.apply_chat_template(msgs, tokenize=False)
        if not full_text.startswith(prompt_text):
            raise UserError(f"probe line {probe.line}: chat template output does not extend the prompt")
        resp_ids = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
        return Tokenized(_cut_turn(prompt_ids + list(resp_ids), len(prompt_ids), tokenizer, probe.end),
                         len(prompt_ids))
    prompt_ids = list(tokenizer(probe.prompt, add_special_tokens=True)["input_ids"]) if probe.prompt else []
    if not prompt_ids and tokenizer.bos_token_id is not None:
        prompt_ids = [tokenizer.bos_token_id]
    resp_ids = list(tokenizer(probe.response, add_special_tokens=False)["input_ids"])
    if not prompt_ids:
        raise UserError(f"probe line {probe.line}: empty prompt and the tokenizer has no BOS token to condition on")
    return Tokenized(prompt_ids + resp_ids, len(prompt_ids))


_SPECIAL: "weakref.WeakKeyDictionary[Any, frozenset]" = weakref.WeakKeyDictionary()


def _special_ids(tokenizer) -> frozenset:
    """Ids of the tokenizer's special tokens, computed once per tokenizer (Gemma's 6k added
    tokens take 7 ms to list, per probe otherwise)."""
    try:
        return _SPECIAL[tokenizer]
    except (KeyError, TypeError):
        pass
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special)
    # an unknown character inside the answer, or a BOS, is no end of a turn (unless it is the EOS)
    ids -= {tokenizer.unk_token_id, tokenizer.bos_token_id} - {tokenizer.eos_token_id}
    out = frozenset(ids)
    try:
        _SPECIAL[tokenizer] = out
    except TypeError:  # not weak-referenceable: computed each time
        pass
    return out


def _cut_turn(ids: List[int], start: int, tokenizer, end: bool) -> List[int]:
    """`ids` up to the assistant turn's end-of-turn marker (the first special token after
    `start`): with it when `end`, without it otherwise. A template that renders no special
    token after the answer keeps everything. Special tokens are the tokenizer's named ones and
    every added token marked special (Gemma's <end_of_turn> is only the latter), but not its
    unknown-character and BOS tokens."""
    special = _special_ids(tokenizer)
    for i in range(start, len(ids)):
        if ids[i] in special:
            cut = i + 1 if end else i
            return ids[:cut] if cut > start else ids[: i + 1]  # never an empty response
    return ids


@dataclass
class ProbeBatch:
    """Right-padded token ids with the (row, position, target) triples of response tokens.

    input_ids, attention_mask: [B, T]. rows, positions, targets: [N] for the N response
    tokens of the batch; `positions` index the hidden state that *predicts* the target
    (one before the target token).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    rows: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor
    probe_index: torch.Tensor  # [N] which probe each response token belongs to

    @property
    def n_tokens(self) -> int:
        return int(self.targets.numel())

    def to(self, device) -> "ProbeBatch":
        return ProbeBatch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.rows,
                                                     self.positions, self.targets, self.probe_index)))


def make_batches(items: Sequence[Tokenized], batch_size: int, pad_id: int, first_index: int = 0) -> List[ProbeBatch]:
    batches = []
    for start in range(0, len(items), batch_size):
        chunk = items[start: start + batch_size]
        T = max(len(t.ids) for t in chunk)
        ids = torch.full((len(chunk), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), T), dtype=torch.long)
        rows, pos, tgt, pidx = [], [], [], []
        for r, t in enumerate(chunk):
            ids[r, : len(t.ids)] = torch.tensor(t.ids)
            mask[r, : len(t.ids)] = 1
            for j in range(t.response_start, len(t.ids)):
                rows.append(r)
                pos.append(j - 1)
                tgt.append(t.ids[j])
                pidx.append(first_index + start + r)
        batches.append(ProbeBatch(ids, mask, torch.tensor(rows), torch.tensor(pos), torch.tensor(tgt),
                                  torch.tensor(pidx)))
    return batches


def tokenize_all(probes: Sequence[Probe], tokenizer, max_length: Optional[int], source: str = "") -> List[Tokenized]:
    out = []
    for p in probes:
        t = tokenize_probe(p, tokenizer)
        if t.response_start >= len(t.ids):
            raise UserError(f"{source}:{p.line}: the response tokenizes to nothing")
        if t.response_start < 1:  # the first response token would be "predicted" by position -1 (the last pad)
            raise UserError(f"{source}:{p.line}: nothing precedes the response (empty prompt, or a chat template "
                            "that renders no tokens before the answer); give the probe a prompt")
        if max_length is not None and len(t.ids) > max_length:
            raise UserError(
                f"{source}:{p.line}: probe is {len(t.ids)} tokens, longer than the model's context of {max_length}"
            )
        out.append(t)
    return out


def pad_id_of(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if tid is not None:
            return int(tid)
    return 0
