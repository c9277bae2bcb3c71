"""Import a GGUF checkpoint as a plain Hugging Face model directory, and prove it round-trips.

transformers reads a GGUF file and dequantizes every tensor, but the model it returns is
marked as quantized and `save_pretrained` refuses it. So: load it, rebuild a plain model
from a cleaned config, copy the state dict in, save config + safetensors + tokenizer
(with its chat template) + generation config into a temporary directory, then verify
the directory before it is renamed into place:

* the reloaded model's logits on a short prompt equal the GGUF model's (max |diff|);
* the saved tokenizer gives the same ids as the GGUF one;
* `Checkpoint.open` and `param_order` accept it (mechmerge can score it);
* optionally, mergekit accepts it: a `linear` merge of the model with itself reproduces
  every tensor.

A failure anywhere leaves no output directory. What a GGUF does not say (a chat
template missing from the file, extra end-of-turn tokens) comes from `ARCHITECTURES`.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Literal, Optional, Sequence, Tuple

import torch

from .. import __version__
from ..errors import UserError
from ..io import atomic_dir, atomic_write_text, check_output, dumps, file_sha256, public_tree
from ..options import Options, opt
from .checkpoint import Checkpoint, env_offline
from .families import family_for
from .load import param_order, pretrained, quiet_transformers

RECORD = "import_gguf.json"  # written next to the model: source, options, verification

# Gemma 3's own template (text-only part). The Gemma 3 base GGUFs carry no
# `tokenizer.chat_template`, while the Hugging Face release of the same model does.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


class VerificationFailed(UserError):
    """The imported model does not check out (logits, tokenizer, mergekit round trip): said in
    one line like any refused input, with nothing written; --debug shows where."""

    def __init__(self, what: str):
        super().__init__(f"verification failed, nothing written: {what}")


@dataclass(frozen=True)
class Arch:
    """What mechmerge needs to know about one GGUF `general.architecture`."""

    model_type: str  # the transformers model_type of the imported config
    chat_template: Optional[str] = None  # used only when the file has none
    stop_tokens: Tuple[str, ...] = ()  # extra end-of-turn tokens for generation_config.eos_token_id
    checked: bool = False  # imported and compared on a real checkpoint, not only on paper


# Architectures that both transformers' GGUF loader and mechmerge's families support.
ARCHITECTURES: Dict[str, Arch] = {
    "llama": Arch("llama", checked=True),  # SmolLM2-135M-Instruct
    "gemma3": Arch("gemma3_text", GEMMA3_CHAT_TEMPLATE, ("<end_of_turn>",), checked=True),  # Gemma-3-270M
    "gemma2": Arch("gemma2", stop_tokens=("<end_of_turn>",)),
    "qwen2": Arch("qwen2", stop_tokens=("<|im_end|>",)),
    "qwen3": Arch("qwen3", stop_tokens=("<|im_end|>",)),
    "phi3": Arch("phi3", stop_tokens=("<|end|>",)),
}

# Config entries that only describe where the weights came from.
_GGUF_CONFIG_KEYS = ("quantization_config", "_model_name_or_path", "_name_or_path", "transformers_version")

VERIFY_PROMPT = "Name three colours of the rainbow, then explain why the sky is blue."


@dataclass
class ImportGGUFOptions(Options):
    file: str = field(metadata=opt("The .gguf file to import.", argument=True, metavar="FILE"))
    out: str = field(metadata=opt("Model directory to write (config, safetensors, tokenizer)."))
    dtype: Literal["float32", "bfloat16"] = field(
        default="float32", metadata=opt("Dtype of the saved weights; float32 keeps the dequantized values exactly."))
    verify: bool = field(default=True, metadata=opt("Reload the written model and compare logits and tokenizer ids."))
    mergekit_check: bool = field(
        default=True, metadata=opt("Also check that a mergekit linear merge of the model with itself reproduces it."))
    tolerance: float = field(default=1e-4, metadata=opt("Largest |logit difference| accepted by the check.", min=0))
    force: bool = field(default=False, metadata=opt("Overwrite an existing output directory."))


@dataclass(frozen=True)
class GGUFInfo:
    path: Path
    architecture: str
    name: str
    tensor_types: Dict[str, int]  # ggml type name -> number of tensors
    has_chat_template: bool
    turn_end_ids: Tuple[int, ...] = ()  # the header's end-of-turn / end-of-message tokens (Llama 3: <|eot_id|>)

    @property
    def arch(self) -> Arch:
        return ARCHITECTURES[self.architecture]


def inspect_gguf(path: str | Path) -> GGUFInfo:
    """Read the header only; one-line UserErrors for a missing, foreign or unsupported file."""
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"GGUF file {str(p)!r} not found")
    if not p.is_file():
        raise UserError(f"{str(p)!r} is a directory; expected a .gguf file")
    with open(p, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise UserError(f"{str(p)!r} is not a GGUF file (it starts with {magic!r}, not b'GGUF')")
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(p))
    except Exception as e:  # truncated or corrupt: gguf-py raises plain ValueError/IndexError
        raise UserError(f"{str(p)!r}: cannot read the GGUF header ({type(e).__name__}: {e}); file corrupted?") from None

    def field_str(key: str) -> Optional[str]:
        f = reader.fields.get(key)
        return None if f is None else str(f.contents())

    def field_int(key: str) -> Optional[int]:
        v = field_str(key)
        try:
            return None if v is None else int(v)
        except ValueError:
            raise UserError(f"{str(p)!r}: GGUF field {key} is {v!r}, expected an integer; file corrupted?") from None

    arch = field_str("general.architecture")
    if arch is None:
        raise UserError(f"{str(p)!r}: GGUF has no general.architecture")
    if arch not in ARCHITECTURES:
        raise UserError(
            f"{str(p)!r}: GGUF architecture {arch!r} is not supported; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    # what transformers' GGUF loader would silently get wrong: it reads one file of a split
    # checkpoint, builds a dense model for a mixture of experts (its experts' weights random),
    # and drops rope scaling it has no mapping for (Llama 3.1 rope_freqs, Gemma 3 linear scaling)
    split = field_int("split.count")
    if split is not None and split > 1:
        raise UserError(f"{str(p)!r} is part 1 of a {split}-file split GGUF; merge the parts first "
                        "(llama.cpp's `llama-gguf-split --merge`)")
    experts = field_int(f"{arch}.expert_count")
    if experts is not None and experts > 0:
        raise UserError(f"{str(p)!r}: a mixture of {experts} experts; mechmerge imports dense models only")
    scaling = field_str(f"{arch}.rope.scaling.type")
    if (scaling is not None and scaling not in ("none", "")) or any(t.name.startswith("rope_freqs")
                                                                     for t in reader.tensors):
        raise UserError(f"{str(p)!r}: rope scaling ({scaling or 'rope_freqs'}) that transformers' GGUF loader "
                        "does not carry over; import the original safetensors checkpoint instead")
    types = Counter(t.tensor_type.name for t in reader.tensors)
    turn_end = tuple(v for v in (field_int(f"tokenizer.ggml.{k}_token_id") for k in ("eot", "eom")) if v is not None)
    return GGUFInfo(p, arch, field_str("general.name") or p.stem, dict(sorted(types.items())),
                    "tokenizer.chat_template" in reader.fields, turn_end)


def load_gguf(info: GGUFInfo):
    """(model, tokenizer) from transformers' GGUF loader: float32, dequantized, eval mode."""
    env_offline()
    quiet_transformers()
    from transformers import AutoTokenizer

    where, name = str(info.path.parent), info.path.name
    with contextlib.redirect_stderr(io.StringIO()):  # per-tensor progress bars
        try:
            tok = AutoTokenizer.from_pretrained(where, gguf_file=name, local_files_only=True)
        except Exception as e:  # no or an unknown tokenizer in the file: transformers raises ValueError, KeyError...
            first = (str(e).strip().splitlines() or [""])[0]
            raise UserError(f"{str(info.path)!r}: transformers cannot build a tokenizer from this GGUF "
                            f"({type(e).__name__}: {first}); mechmerge needs the tokenizer in the file "
                            "(llama.cpp's convert_hf_to_gguf.py writes it)") from None
        model, loading = pretrained(where, gguf_file=name, dtype=torch.float32, local_files_only=True,
                                    output_loading_info=True)
    # a weight the loader could not find in the file is initialised at random, and every later
    # check would compare that random model with itself
    missing = [k for k in loading.get("missing_keys", ()) if not (k == "lm_head.weight"
                                                                    and model.config.tie_word_embeddings)]
    if missing:
        raise VerificationFailed(f"transformers found no GGUF tensor for {len(missing)} weight(s) of the model "
                                 f"(e.g. {missing[0]}); they would be random")
    model.eval()
    if not tok.chat_template and info.arch.chat_template:
        tok.chat_template = info.arch.chat_template
    return model, tok


def plain_config(gguf_config):
    """The same config without GGUF remnants, as its own class builds it from a dict."""
    from transformers import AutoConfig

    d = gguf_config.to_dict()
    for key in _GGUF_CONFIG_KEYS:
        d.pop(key, None)
    model_type = d.pop("model_type")
    return AutoConfig.for_model(model_type, **d)


def plain_model(gguf_model, dtype: torch.dtype):
    """A plain model (no quantizer attached) holding the GGUF model's weights in `dtype`."""
    from transformers import AutoModelForCausalLM, GenerationConfig

    cfg = plain_config(gguf_model.config)
    cfg.dtype = dtype
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    state = gguf_model.state_dict()
    if cfg.tie_word_embeddings:
        state = {k: v for k, v in state.items() if k != "lm_head.weight"}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (cfg.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch after GGUF load: missing {missing[:3]}, unexpected {unexpected[:3]}")
    model.tie_weights()
    model.generation_config = GenerationConfig.from_model_config(cfg)
    model.eval()
    return model


def generation_config(model, tok, arch: Arch, turn_end_ids: Sequence[int] = ()):
    """End generation at the model's EOS, the file's end-of-turn tokens and the architecture's."""
    gen = model.generation_config
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    eos = [e for e in eos if e is not None]
    eos += [t for t in turn_end_ids if t not in eos]
    for t in arch.stop_tokens:
        tid = tok.convert_tokens_to_ids(t)
        if isinstance(tid, int) and tid != tok.unk_token_id and tid not in eos:
            eos.append(tid)
    gen.eos_token_id = eos[0] if len(eos) == 1 else eos
    if gen.pad_token_id is None and tok.pad_token_id is not None:
        gen.pad_token_id = tok.pad_token_id
    return gen


def save_tokenizer(tok, out: Path, config) -> None:
    """Save without the loader's own kwargs, with the model's context as its max length."""
    for key in ("is_local", "local_files_only", "gguf_file", "name_or_path"):
        tok.init_kwargs.pop(key, None)
    tok.model_max_length = int(getattr(config, "max_position_embeddings", 0) or tok.model_max_length)
    tok.init_kwargs["model_max_length"] = tok.model_max_length
    tok.save_pretrained(out)


def verify_inputs(tok) -> Dict[str, torch.Tensor]:
    """A short chat-formatted prompt (plain text when there is no template), [1, T] ids."""
    if tok.chat_template:
        text = tok.apply_chat_template([{"role": "user", "content": VERIFY_PROMPT}], tokenize=False,
                                       add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, return_tensors="pt")
    else:
        ids = tok(VERIFY_PROMPT, return_tensors="pt")  # with the default special tokens (BOS), as plain probes
    return {"input_ids": ids["input_ids"], "attention_mask": ids["attention_mask"]}


@torch.no_grad()
def logits_of(model, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
    """[T, V] float32 logits of the single prompt."""
    return model(**inputs).logits[0].float()


def round_weights_(model, dtype: torch.dtype) -> None:
    """Round every float parameter through `dtype` (what saving in `dtype` does), in place."""
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.copy_(p.to(dtype).to(p.dtype))


def check_reload(out: Path, ref_logits: torch.Tensor, tok, inputs, tolerance: float) -> Dict[str, Any]:
    """Reload `out` as float32 and compare logits and tokenization with the references."""
    from transformers import AutoTokenizer

    with contextlib.redirect_stderr(io.StringIO()):
        model = pretrained(out, dtype=torch.float32, local_files_only=True)
        tok2 = AutoTokenizer.from_pretrained(out, local_files_only=True)
    model.eval()
    diff = float((logits_of(model, inputs) - ref_logits).abs().max())
    if not diff <= tolerance:  # also catches NaN
        raise VerificationFailed(f"reloaded model's logits differ from the GGUF model's by {diff:.3g} (> {tolerance:g})")
    if tok2.chat_template != tok.chat_template:
        raise VerificationFailed("the saved tokenizer lost its chat template")
    theirs = verify_inputs(tok2)["input_ids"]
    if not torch.equal(theirs, inputs["input_ids"]):
        raise VerificationFailed("the saved tokenizer gives other ids than the GGUF tokenizer on the verification "
                                 "prompt")
    # plain text with the default special tokens too (plain probes are tokenized so): a lost
    # add_bos_token would pass the chat check above
    if tok2(VERIFY_PROMPT)["input_ids"] != tok(VERIFY_PROMPT)["input_ids"]:
        raise VerificationFailed("the saved tokenizer adds other special tokens than the GGUF tokenizer")
    ckpt = Checkpoint.open(str(out), label="imported model")
    names = param_order(ckpt)
    return {"max_abs_logit_diff": diff, "prompt_tokens": int(inputs["input_ids"].shape[1]),
            "family": ckpt.family.name, "parameters": len(names)}


def check_mergekit(out: Path) -> Dict[str, Any]:
    """A mergekit `linear` merge of the model with itself must reproduce every tensor."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import MergeOptions, run_merge

    src = Checkpoint.open(str(out), label="imported model")
    with tempfile.TemporaryDirectory(prefix=".mergekit-check.", dir=out.parent) as tmp:
        # mergekit refuses the same path twice; a second name for the model is a second input.
        twin = Path(tmp) / "twin"
        twin.symlink_to(out.resolve(), target_is_directory=True)
        config = MergeConfiguration.model_validate({
            "merge_method": "linear",
            "models": [{"model": str(out), "parameters": {"weight": 1.0}},
                       {"model": str(twin), "parameters": {"weight": 1.0}}],
            "dtype": "float32",
        })
        merged_dir = Path(tmp) / "merged"
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            run_merge(config, str(merged_dir), MergeOptions(copy_tokenizer=False, write_model_card=False, quiet=True))
        merged = Checkpoint.open(str(merged_dir), label="mergekit output")
        lost = sorted(set(src.tensors) - set(merged.tensors))
        if lost:
            raise VerificationFailed(f"mergekit dropped tensor {lost[0]!r} of the imported model")
        for name in src.tensors:
            a, b = src.get(name), merged.get(name)
            if not torch.equal(a.float(), b.float()):
                raise VerificationFailed(f"mergekit linear self-merge changed tensor {name!r}")
        n = len(src.tensors)
    return {"tensors_equal": n}


def import_gguf(opts: ImportGGUFOptions, log=print) -> Dict[str, Any]:
    """Write `opts.out`; return the record also saved there as import_gguf.json."""
    info = inspect_gguf(opts.file)
    out = check_output(opts.out, opts.force, "output directory", directory=True, inputs=[opts.file],
                       looks_like="config.json")
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[opts.dtype]
    family_for({"model_type": info.arch.model_type}, str(info.path))  # mechmerge must support it
    seconds: Dict[str, float] = {}
    t0 = time.perf_counter()

    gguf_model, tok = load_gguf(info)
    if gguf_model.config.model_type != info.arch.model_type:
        raise UserError(f"{str(info.path)!r}: transformers read model type {gguf_model.config.model_type!r}, "
                        f"expected {info.arch.model_type!r} for GGUF architecture {info.architecture!r}")
    seconds["load_gguf"] = time.perf_counter() - t0
    log(f"loaded {info.path.name} ({info.architecture}, {info.name}) in {seconds['load_gguf']:.1f}s")
    inputs = verify_inputs(tok)
    ref_fp32 = logits_of(gguf_model, inputs) if opts.verify else None

    with atomic_dir(out, force=opts.force) as tmp:
        t = time.perf_counter()
        model = plain_model(gguf_model, dtype)
        model.generation_config = generation_config(model, tok, info.arch, info.turn_end_ids)
        model.save_pretrained(tmp)
        save_tokenizer(tok, tmp, model.config)
        del model
        seconds["save"] = time.perf_counter() - t
        verify: Dict[str, Any] = {}
        if opts.verify:
            t = time.perf_counter()
            ref = ref_fp32
            if dtype != torch.float32:  # compare against the GGUF model holding the rounded weights
                round_weights_(gguf_model, dtype)
                ref = logits_of(gguf_model, inputs)
            verify = check_reload(tmp, ref, tok, inputs, opts.tolerance)
            if dtype != torch.float32:
                verify["max_abs_logit_diff_vs_float32"] = float((ref - ref_fp32).abs().max())
            seconds["verify"] = time.perf_counter() - t
            log(f"verified: max |logit diff| {verify['max_abs_logit_diff']:.3g} over {verify['prompt_tokens']} tokens")
        del gguf_model
        if opts.verify and opts.mergekit_check:
            t = time.perf_counter()
            verify["mergekit"] = check_mergekit(tmp)
            seconds["mergekit_check"] = time.perf_counter() - t
            log(f"mergekit linear self-merge reproduces all {verify['mergekit']['tensors_equal']} tensors")
        seconds["total"] = time.perf_counter() - t0
        record = {
            "format": "mechmerge-import-gguf", "version": 1, "mechmerge": __version__,
            "options": opts.to_dict(),
            "source": {"file": str(info.path.resolve()), "sha256": file_sha256(info.path), "name": info.name,
                       "architecture": info.architecture, "tensor_types": info.tensor_types},
            "model_type": info.arch.model_type,
            "chat_template": "gguf" if info.has_chat_template else
                             (f"mechmerge default for {info.architecture}" if tok.chat_template else None),
            "verify": verify,
            "seconds": seconds,
        }
        atomic_write_text(tmp / RECORD, dumps(record))
        public_tree(tmp)
    log(f"wrote {out} in {seconds['total']:.1f}s")
    return record


def read_record(path: str | Path) -> Optional[Dict[str, Any]]:
    """The import record of a model directory, or None when there is none."""
    p = Path(path) / RECORD
    return json.loads(p.read_text()) if p.is_file() else None
