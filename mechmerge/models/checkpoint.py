"""Checkpoints on disk: resolve a path or cached Hub id, read config and tensor headers,
stream single tensors lazily, and check that two checkpoints share an architecture.

Nothing here loads a whole model. Safetensors tensors are read one at a time with a
plain positioned read into a fresh buffer, not through a memory map: pages of a mapped
file count in the process's resident set for as long as the map lives, so reading every
tensor of base and expert once (the identity check does) through `safe_open` kept two
extra models' worth of file pages resident during scoring. An expert costs no memory
until a unit of it is patched in.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple

import torch

from ..errors import UserError
from ..io import read_json
from .families import Family, config_value, family_for

# Config fields that must agree between base and experts: anything that changes the
# shape of a tensor or the computation a tensor takes part in.
ARCH_FIELDS = (
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "intermediate_size", "vocab_size", "head_dim",
    "tie_word_embeddings", "n_embd", "n_layer", "n_head", "n_inner", "n_positions",
    "max_position_embeddings", "rope_parameters", "partial_rotary_factor", "sliding_window", "layer_types",
    "use_sliding_window", "max_window_layers",
    "hidden_activation", "hidden_act", "final_logit_softcapping", "attn_logit_softcapping",
    "query_pre_attn_scalar", "rms_norm_eps", "layer_norm_epsilon",
)


def arch_view(config: Dict) -> Dict:
    """ARCH_FIELDS as transformers reads them, so two configs written by different transformers
    versions compare by meaning: v4 writes `rope_theta` and `rope_scaling` (Gemma 3 also
    `rope_local_base_freq`) where v5 writes one `rope_parameters`, and either may leave out a
    field whose default the other writes. Falls back to the raw JSON for a model type this
    transformers does not know (remote code)."""
    from transformers import AutoConfig

    from .load import quiet_transformers

    quiet_transformers()  # validation warnings about the config are not ours to print
    fields = {k: v for k, v in config.items() if k != "model_type"}
    try:
        cfg = AutoConfig.for_model(config.get("model_type", ""), **fields)
    except Exception:  # unknown model type, or a config this version refuses: compare the raw fields
        return {k: config.get(k) for k in ARCH_FIELDS}
    text = getattr(cfg, "text_config", None)  # multimodal wrappers keep the language model's fields inside
    return {k: getattr(cfg, k, getattr(text, k, None) if text is not None else None) for k in ARCH_FIELDS}


def resolve_model_path(ref: str, what: str = "model") -> Path:
    """A local directory, or a Hub id that is already in the local cache (never downloads)."""
    p = Path(ref).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UserError(f"{what} {ref!r} is a file; expected a model directory with config.json")
        return p
    looks_like_id = ref.count("/") == 1 and not ref.startswith((".", "/", "~"))
    if looks_like_id:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(ref, local_files_only=True))
        except Exception:
            pass
    raise UserError(
        f"{what} {ref!r} not found: not a directory"
        + (" and not in the local Hugging Face cache (mechmerge never downloads)" if looks_like_id else "")
    )


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: Tuple[int, ...]
    dtype: str
    file: str
    start: int = 0  # absolute byte range in a safetensors file (header included)
    end: int = 0


# safetensors dtype names -> torch dtypes (the ones torch can hold)
ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "U16": torch.uint16, "U32": torch.uint32, "U64": torch.uint64,
}


@dataclass
class Checkpoint:
    """A model directory: its config and an index of its tensors, read lazily."""

    path: Path
    config: Dict
    tensors: Dict[str, TensorInfo]
    family: Family
    label: str = "model"

    @classmethod
    def open(cls, ref: str, label: str = "model", allow_pickle: bool = False) -> "Checkpoint":
        path = resolve_model_path(ref, label)
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise UserError(f"{label} {str(path)!r} has no config.json; is it a Hugging Face model directory?")
        config = read_json(cfg_file, f"{label} config")
        family = family_for(config, str(path))
        tensors = _index_safetensors(path, label)
        if not tensors:
            pickles = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
            if pickles and allow_pickle:
                tensors = _index_pickle(path, pickles)
            elif pickles:
                raise UserError(
                    f"{label} {str(path)!r} has only pickle weights ({pickles[0]}); convert to safetensors "
                    "or pass --allow-pickle (loaded with weights_only=True)"
                )
            else:
                raise UserError(f"{label} {str(path)!r} has no weights (*.safetensors)")
        return cls(path=path, config=config, tensors=tensors, family=family, label=label)

    # -- lazy reads ---------------------------------------------------------------------
    def get(self, name: str) -> torch.Tensor:
        """One tensor, read from disk now (never cached here)."""
        info = self.tensors.get(name)
        if info is None:
            raise UserError(f"{self.label} {str(self.path)!r} has no tensor {name!r}")
        if info.file.endswith(".safetensors"):
            return _read_tensor(self.path / info.file, info)
        return _pickle_state(self.path / info.file)[name]

    def row_bytes(self, name: str) -> int:
        """Bytes of one dim-0 row of a safetensors tensor; 0 when rows cannot be read alone
        (other formats, scalars, empty rows)."""
        info = self.tensors.get(name)
        if info is None or not info.file.endswith(".safetensors") or not info.shape:
            return 0
        return math.prod(info.shape[1:]) * ST_DTYPES[info.dtype].itemsize

    def read_rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows [start, stop) along dim 0, reading only their bytes where `row_bytes` allows
        (otherwise the whole tensor is read and sliced)."""
        row = self.row_bytes(name)
        if not row:
            return self.get(name)[start:stop]
        info = self.tensors[name]
        part = TensorInfo(name, (stop - start, *info.shape[1:]), info.dtype, info.file,
                          info.start + start * row, info.start + stop * row)
        return _read_tensor(self.path / info.file, part)

    def has(self, name: str) -> bool:
        return name in self.tensors

    @property
    def tied_embeddings(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", self.family.tied_by_default))

    @property
    def num_layers(self) -> int:
        return int(config_value(self.config, "num_hidden_layers"))

    def nbytes(self) -> int:
        sizes = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "BOOL": 1}
        return sum(math.prod(t.shape) * sizes.get(t.dtype, 4) for t in self.tensors.values())

    def check_finite(self, names: Optional[Iterable[str]] = None) -> None:
        """Read every tensor once: catches NaN/Inf and truncated files before any compute."""
        for name in names if names is not None else self.tensors:
            t = self.get(name)
            if t.is_floating_point() and not torch.isfinite(t).all():
                bad = "NaN" if torch.isnan(t).any() else "Inf"
                raise UserError(f"{self.label} {str(self.path)!r}: tensor {name!r} contains {bad}")


def _index_safetensors(path: Path, label: str) -> Dict[str, TensorInfo]:
    files = sorted(p.name for p in path.glob("*.safetensors"))
    index_file = path / "model.safetensors.index.json"
    if index_file.is_file():
        try:
            weight_map = json.loads(index_file.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise UserError(f"{index_file}: not a valid safetensors index ({e})") from None
        files = sorted(set(weight_map.values()))
    out: Dict[str, TensorInfo] = {}
    for fname in files:
        fpath = path / fname
        if not fpath.is_file():
            raise UserError(f"{label}: shard {fname} listed in the index is missing from {path}")
        header, data_start = _read_header(fpath)
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            lo, hi = meta["data_offsets"]
            out[name] = TensorInfo(name, tuple(meta["shape"]), meta["dtype"], fname, data_start + lo, data_start + hi)
    return out


def _read_header(fpath: Path) -> Tuple[Dict, int]:
    """Parse a safetensors header, check the file is long enough for its data and that
    every tensor's byte range matches its shape and dtype; returns (header, data start)."""
    size = fpath.stat().st_size
    try:
        with open(fpath, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or 8 + n > size:
                raise ValueError("header length out of range")
            header = json.loads(f.read(n))
        end = 0
        for k, meta in header.items():
            if k == "__metadata__":
                continue
            lo, hi = meta["data_offsets"]
            dtype = ST_DTYPES.get(meta["dtype"])
            if dtype is None:
                raise ValueError(f"tensor {k!r} has dtype {meta['dtype']}, which torch cannot hold")
            if not 0 <= lo <= hi or hi - lo != math.prod(meta["shape"]) * dtype.itemsize:
                raise ValueError(f"tensor {k!r}: byte range {lo}..{hi} does not fit shape {meta['shape']}")
            end = max(end, hi)
        if 8 + n + end > size:
            raise ValueError(f"file is {size} bytes, header promises {8 + n + end}: truncated")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise UserError(f"{fpath}: not a valid safetensors file ({e})") from None
    return header, 8 + n


def _read_tensor(fpath: Path, info: TensorInfo) -> torch.Tensor:
    """One tensor, read into its own buffer (see the module docstring: no memory map)."""
    dtype = ST_DTYPES[info.dtype]
    buf = bytearray(info.end - info.start)
    try:
        with open(fpath, "rb", buffering=0) as f:
            f.seek(info.start)
            got = f.readinto(buf)
    except OSError as e:
        raise UserError(f"{fpath}: cannot read tensor {info.name!r} ({e})") from None
    if got != len(buf):
        raise UserError(f"{fpath}: cannot read tensor {info.name!r} (file shorter than its header says); corrupted?")
    if not buf:
        return torch.empty(info.shape, dtype=dtype)
    # safetensors stores little-endian; frombuffer shares the bytearray, which the tensor keeps alive
    return torch.frombuffer(buf, dtype=dtype).reshape(info.shape)


def _pickle_state(fpath: Path) -> Dict[str, torch.Tensor]:
    # weights_only=True refuses arbitrary objects: loading a checkpoint never runs code.
    import pickle

    try:
        return torch.load(fpath, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{fpath}: refused by torch.load(weights_only=True), it holds more than tensors "
                        f"or is damaged ({first[:120]})") from None


def _index_pickle(path: Path, files: List[str]) -> Dict[str, TensorInfo]:
    out = {}
    for fname in files:
        for name, t in _pickle_state(path / fname).items():
            out[name] = TensorInfo(name, tuple(t.shape), str(t.dtype), fname)
    return out


def check_compatible(base: Checkpoint, other: Checkpoint) -> None:
    """Raise a one-line UserError at the first architectural difference."""
    mine, theirs = arch_view(base.config), arch_view(other.config)
    for key in ARCH_FIELDS:
        a, b = mine[key], theirs[key]
        if a != b:
            raise UserError(
                f"{other.label} {str(other.path)!r} does not match the base: config {key} is {b!r}, base has {a!r}"
            )
    for name, info in base.tensors.items():
        o = other.tensors.get(name)
        if o is None:
            raise UserError(f"{other.label} {str(other.path)!r} is missing tensor {name!r} that the base has")
        if o.shape != info.shape:
            raise UserError(
                f"{other.label} {str(other.path)!r}: tensor {name!r} has shape {list(o.shape)}, base has {list(info.shape)}"
            )
    extra = sorted(set(other.tensors) - set(base.tensors))
    if extra:
        raise UserError(f"{other.label} {str(other.path)!r} has tensor {extra[0]!r} that the base lacks")


def env_offline() -> None:
    """mechmerge never reaches the network for models; make transformers agree."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
