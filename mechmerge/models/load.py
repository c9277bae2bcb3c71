"""Load models and tokenizers for measurement, and map checkpoint tensors to parameters."""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from ..errors import UserError
from .checkpoint import Checkpoint, env_offline


def quiet_transformers() -> None:
    """Progress bars and advice from transformers would drown ours."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)


def pretrained(path, **kwargs):
    """`AutoModelForCausalLM.from_pretrained` for the plain model. transformers 5.25 turned hub
    kernels on by default: they swap layer forwards for downloaded code (numerics other than the
    plain model's, which the scores describe) and reject a device_map with offloaded (meta)
    blocks before load_model's own refusal can explain it."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, use_kernels=False, **kwargs)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device} was asked for but no CUDA GPU is available; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError:
        raise UserError(f"invalid --device {device!r}; use auto, cpu or cuda[:N]") from None


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        # Scores are differences of small log-probabilities: float32 everywhere, since bf16
        # rounding is the size of the small scores; --dtype bfloat16 halves memory when needed.
        return torch.float32
    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}; valid: auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def param_order(ckpt: Checkpoint, trust_remote_code: bool = False) -> List[str]:
    """Parameter names in model order, as the checkpoint names them (tied copies dropped).

    The model is built on the meta device, which costs no memory.
    """
    env_offline()
    quiet_transformers()
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(ckpt.path, local_files_only=True, trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code)
    names = [n for n, _ in model.named_parameters()]
    missing = [n for n in names if not ckpt.has(n)]
    if missing:
        raise UserError(
            f"{ckpt.label} {str(ckpt.path)!r}: parameter {missing[0]!r} of the model is not in its checkpoint files"
        )
    return names


def load_model(ckpt: Checkpoint, device: torch.device, dtype: torch.dtype, trust_remote_code: bool = False,
               device_map: Optional[str] = None):
    """The full model, in eval mode with gradients off, on `device`.

    Safetensors checkpoints whose tensor names are the model's parameter names (every
    checkpoint `save_pretrained` writes) are streamed: the model is built without
    weights and filled one tensor at a time, so loading never holds more than the model
    plus one tensor. HF's `from_pretrained` memory-maps the files, and the mapped pages
    count as resident on top of the model until it returns: twice the model at peak.
    Anything else (pickles, renamed legacy keys) goes through `from_pretrained`, and so does
    a `device_map` (accelerate places the blocks over the devices; `device` is ignored).
    """
    env_offline()
    quiet_transformers()
    model = None if device_map else _stream(ckpt, device, dtype, trust_remote_code)
    if model is None:
        with contextlib.redirect_stderr(io.StringIO()):
            model = pretrained(
                ckpt.path,
                dtype=dtype,
                attn_implementation=ckpt.family.attn_implementation,
                local_files_only=True,
                trust_remote_code=trust_remote_code,
                use_safetensors=None if any(t.file.endswith(".safetensors") for t in ckpt.tensors.values()) else False,
                **({"device_map": device_map} if device_map else {}),
            )
    if device_map and any(p.device.type == "meta" for p in model.parameters()):
        raise UserError(f"{ckpt.label} {str(ckpt.path)!r} does not fit in the GPUs' memory: device_map "
                        f"{device_map!r} offloaded part of it (to CPU RAM or disk), and accelerate keeps offloaded "
                        "weights outside the modules, where patching cannot write them; use --dtype bfloat16 "
                        "or more GPUs")
    if not device_map:  # a dispatched model stays where accelerate put it: .to() would gather it on one device
        model.to(device)
    model.eval()
    model.requires_grad_(False)
    contiguous_head_input(model)
    return model


def contiguous_head_input(model) -> None:
    """Give the lm_head a contiguous input. Generation keeps only the last position
    (`hidden[:, -1:, :]`, a strided view), and for a weight that needs no gradient torch's
    matmul then broadcasts the [V, H] weight to [B, H, V] and copies it, once per forward:
    Gemma-3's 262k x 640 head made a forward of 4 prompts 3.7 s instead of 0.15 s, and
    generation 9x slower with 5x the memory (16 GB for 48 prompts)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and not getattr(head, "_mechmerge_contiguous", False):
        head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))
        head._mechmerge_contiguous = True


def _stream(ckpt: Checkpoint, device: torch.device, dtype: torch.dtype, trust_remote_code: bool):
    """Build the model with parameters on the meta device and read them in; None when the
    checkpoint's names do not cover the model's parameters exactly."""
    if not all(t.file.endswith(".safetensors") for t in ckpt.tensors.values()):
        return None
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    cfg = AutoConfig.from_pretrained(ckpt.path, local_files_only=True, trust_remote_code=trust_remote_code)
    with contextlib.redirect_stderr(io.StringIO()), init_empty_weights(include_buffers=False):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype, trust_remote_code=trust_remote_code,
                                                 attn_implementation=ckpt.family.attn_implementation)
    # from_config leaves tying to from_pretrained; tie on meta so tied names share one
    # object, then load each object once and set it under all its names
    model.tie_weights()
    groups: Dict[int, List[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    buffers = {n for n, _ in model.named_buffers()}
    covered = {n for names in groups.values() for n in names}
    if any(not any(ckpt.has(n) for n in names) for names in groups.values()) or \
            any(n not in covered and n not in buffers for n in ckpt.tensors):
        return None
    for names in groups.values():
        present = [n for n in names if ckpt.has(n)]
        # a tied group whose names the checkpoint stores as different tensors is not tied there:
        # from_pretrained unties it, so leave it to from_pretrained
        if len(present) > 1 and any(tuple(ckpt.tensors[n].shape) != tuple(ckpt.tensors[present[0]].shape)
                                    or not torch.equal(ckpt.get(n), ckpt.get(present[0])) for n in present[1:]):
            return None
        src = present[0]
        meta = model.get_parameter(names[0])
        if tuple(ckpt.tensors[src].shape) != tuple(meta.shape):
            raise UserError(f"{ckpt.label} {str(ckpt.path)!r}: tensor {src!r} has shape "
                            f"{list(ckpt.tensors[src].shape)}, its config builds {list(meta.shape)}; "
                            "config.json and the weights do not belong together")
        value = ckpt.get(src)
        param = torch.nn.Parameter(value.to(device, dtype if value.is_floating_point() else value.dtype),
                                   requires_grad=False)
        for n in names:
            module, _, attr = n.rpartition(".")
            setattr(model.get_submodule(module), attr, param)
    for n in buffers & set(ckpt.tensors):  # persistent buffers saved with the weights
        module, _, attr = n.rpartition(".")
        sub = model.get_submodule(module)
        sub._buffers[attr] = ckpt.get(n).to(device, sub._buffers[attr].dtype)
    try:
        model.generation_config = GenerationConfig.from_pretrained(ckpt.path, local_files_only=True)
    except OSError:  # no generation_config.json: keep the one derived from the config
        pass
    return model


def load_tokenizer(ckpts: Sequence[Checkpoint], trust_remote_code: bool = False):
    """The first tokenizer found among the checkpoints (base first)."""
    env_offline()
    quiet_transformers()
    from transformers import AutoTokenizer

    def has_tok(ckpt: Checkpoint) -> bool:
        return any((ckpt.path / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "vocab.json"))

    found = [c for c in ckpts if has_tok(c)]
    if not found:
        raise UserError(f"no tokenizer found in {str(ckpts[0].path)!r} (or the experts); save one with the model")
    tok = AutoTokenizer.from_pretrained(found[0].path, local_files_only=True, trust_remote_code=trust_remote_code)
    if not getattr(tok, "chat_template", None):
        # a pretrained base without a chat template, its instruction-tuned experts with one: chat
        # probes use the experts' template (the vocabularies agree: check_compatible compares them)
        for c in found[1:]:
            other = AutoTokenizer.from_pretrained(c.path, local_files_only=True, trust_remote_code=trust_remote_code)
            if getattr(other, "chat_template", None):
                tok.chat_template = other.chat_template
                break
    return tok


def params_by_name(model: torch.nn.Module) -> Dict[str, torch.nn.Parameter]:
    """name -> parameter, with tied parameters listed under every name they have."""
    return dict(model.named_parameters(remove_duplicate=False))


@torch.no_grad()
def overwrite_params(params: Dict[str, torch.nn.Parameter], tensors: Iterable[Tuple[str, torch.Tensor]]) -> None:
    """Copy (name, tensor) pairs into the model's parameters in place (a merge into a loaded
    model: no reload). Names the model has no parameter for are skipped."""
    for name, t in tensors:
        if name in params:
            params[name].data.copy_(t)
