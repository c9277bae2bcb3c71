"""A character-level Hugging Face tokenizer, for the zoo and for test fixtures.

One token per printable ASCII character plus a few specials and chat-role markers, so
tiny models can learn string skills and the chat-template code path is exercised
without any download.
"""

from __future__ import annotations

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
CHAT_MARKERS = ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHARS = [chr(c) for c in range(32, 127)] + ["\n"]

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '<|end|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def build_char_tokenizer():
    """A PreTrainedTokenizerFast: BOS prepended, no EOS appended, chars are tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + CHAT_MARKERS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", vocab["<s>"])])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        additional_special_tokens=CHAT_MARKERS,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def vocab_size() -> int:
    return len(SPECIALS) + len(CHAT_MARKERS) + len(CHARS)


BOS_ID, EOS_ID, PAD_ID = SPECIALS.index("<s>"), SPECIALS.index("</s>"), SPECIALS.index("<pad>")
_CHAR_IDS = {c: i for i, c in enumerate(SPECIALS + CHAT_MARKERS + CHARS) if c in CHARS}


def char_ids(text: str) -> list[int]:
    """Token ids of plain text without special tokens, the same as the HF tokenizer gives
    (one id per character; unknown characters become <unk>), without its per-call cost."""
    unk = SPECIALS.index("<unk>")
    return [_CHAR_IDS.get(c, unk) for c in text]
