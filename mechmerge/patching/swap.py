"""In-place weight swaps that always put the model back.

Patching a unit copies the source checkpoint's slices into the live parameters; on
exit the same slices are copied back from the checkpoint the model was equal to
(the swapper tracks which one), so no copy of the replaced weights is kept. Reads go in
pieces of at most PIECE_BYTES rows, so the largest transient is a few MB even for an
embedding matrix (113 MB in SmolLM2; a clone plus a source read of it used to be the
peak of a scoring run). The restore runs in `finally`, so an exception or Ctrl-C inside
the block still leaves the model bit-identical to before (a cast on load and a cast on
restore round the same way).
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterable, Iterator, List, Optional, Tuple

import torch

from ..models.checkpoint import Checkpoint
from ..models.units import Slice, Unit


PIECE_BYTES = 2 ** 20


def pieces(source: Checkpoint, s: Slice) -> Iterator[Tuple[object, torch.Tensor]]:
    """(index into the live tensor, values from `source`) pieces that make up slice `s`.

    Row ranges (whole tensors, head rows) are read a few MB at a time; column slices
    (o_proj heads) and non-safetensors files are read whole."""
    row = source.row_bytes(s.tensor)
    if not row or s.dim not in (None, 0):
        yield s.index(), source.get(s.tensor)[s.index()]
        return
    lo, hi = (0, source.tensors[s.tensor].shape[0]) if s.dim is None else (s.start, s.stop)
    step = max(1, PIECE_BYTES // row)
    for r in range(lo, hi, step):
        e = min(hi, r + step)
        yield slice(r, e), source.read_rows(s.tensor, r, e)


class WeightSwapper:
    def __init__(self, params: Dict[str, torch.nn.Parameter], loaded_from: Optional[Checkpoint] = None):
        self.params = params
        # the checkpoint the live weights equal (outside `patched` blocks); None: unknown,
        # so `patched` keeps a copy of what it replaces
        self.current = loaded_from

    def _target(self, s: Slice) -> torch.Tensor:
        return self.params[s.tensor].data[s.index()]

    @torch.no_grad()
    def write(self, slices: Iterable[Slice], source: Checkpoint) -> None:
        """Copy `slices` from `source` into the model, piece by piece."""
        for s in slices:
            live = self.params[s.tensor].data
            for index, values in pieces(source, s):
                live[index].copy_(values)

    @contextlib.contextmanager
    def patched(self, units: Iterable[Unit], source: Checkpoint) -> Iterator[None]:
        """Within the block the units' weights come from `source`; restored on exit."""
        slices = [s for u in units for s in u.slices]
        restore = self.current
        saved: List[Tuple[Slice, torch.Tensor]] = []
        try:
            if restore is None:
                with torch.no_grad():
                    for s in slices:
                        saved.append((s, self._target(s).clone()))
            self.current = None  # patched weights equal no checkpoint: a nested patch must copy
            self.write(slices, source)
            yield
        finally:
            if restore is not None:
                self.write(reversed(slices), restore)
            with torch.no_grad():
                for s, old in reversed(saved):
                    self._target(s).copy_(old)
            self.current = restore

    @contextlib.contextmanager
    def swapped_to(self, source: Checkpoint, restore_from: Checkpoint, names: Iterable[str]) -> Iterator[None]:
        """The whole model becomes `source` (tensor by tensor, streamed); on exit it is
        reloaded from `restore_from`, the checkpoint it was loaded from. Keeping no copy
        is what holds peak memory at one model."""
        names = list(names)
        try:
            self.current = None  # a half-written model equals no checkpoint
            self.write([Slice(n) for n in names], source)
            self.current = source
            yield
        finally:
            self.current = None
            self.write([Slice(n) for n in names], restore_from)
            self.current = restore_from


def identical(base: Checkpoint, expert: Checkpoint, unit: Unit) -> bool:
    """True when every slice of `unit` is bit-identical in the two checkpoints (read in
    pieces, so comparing two embedding matrices never holds both whole)."""
    for s in unit.slices:
        if base.tensors[s.tensor].dtype != expert.tensors[s.tensor].dtype:  # pieces would not line up
            if not torch.equal(base.get(s.tensor)[s.index()], expert.get(s.tensor)[s.index()]):
                return False
            continue
        for (_, a), (_, b) in zip(pieces(base, s), pieces(expert, s)):
            if not torch.equal(a, b):
                return False
    return True
