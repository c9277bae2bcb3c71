"""In-place weight swaps that always put the model back.

Patching a unit copies the source checkpoint's slices into the live parameters and
keeps only the replaced slices (one unit's worth of memory) to restore them. The
restore runs in `finally`, so an exception or Ctrl-C inside the block still leaves
the model bit-identical to before.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterable, Iterator, List, Tuple

import torch

from ..models.checkpoint import Checkpoint
from ..models.units import Slice, Unit


class WeightSwapper:
    def __init__(self, params: Dict[str, torch.nn.Parameter]):
        self.params = params

    def _target(self, s: Slice) -> torch.Tensor:
        return self.params[s.tensor].data[s.index()]

    @torch.no_grad()
    def write(self, slices: Iterable[Slice], source: Checkpoint) -> None:
        """Copy `slices` from `source` (read lazily, one tensor at a time) into the model."""
        cache: Dict[str, torch.Tensor] = {}
        for s in slices:
            if s.tensor not in cache:
                cache = {s.tensor: source.get(s.tensor)}  # keep at most one source tensor alive
            self._target(s).copy_(cache[s.tensor][s.index()])

    @contextlib.contextmanager
    def patched(self, units: Iterable[Unit], source: Checkpoint) -> Iterator[None]:
        """Within the block the units' weights come from `source`; restored on exit."""
        slices = [s for u in units for s in u.slices]
        saved: List[Tuple[Slice, torch.Tensor]] = []
        try:
            with torch.no_grad():
                for s in slices:
                    saved.append((s, self._target(s).clone()))
            self.write(slices, source)
            yield
        finally:
            with torch.no_grad():
                for s, old in reversed(saved):
                    self._target(s).copy_(old)

    @contextlib.contextmanager
    def swapped_to(self, source: Checkpoint, restore_from: Checkpoint, names: Iterable[str]) -> Iterator[None]:
        """The whole model becomes `source` (tensor by tensor, streamed); on exit it is
        reloaded from `restore_from`, the checkpoint it was loaded from. Keeping no copy
        is what holds peak memory at one model."""
        names = list(names)
        try:
            self.write([Slice(n) for n in names], source)
            yield
        finally:
            self.write([Slice(n) for n in names], restore_from)


def identical(base: Checkpoint, expert: Checkpoint, unit: Unit) -> bool:
    """True when every slice of `unit` is bit-identical in the two checkpoints."""
    for name in unit.tensors:
        a, b = base.get(name), expert.get(name)
        for s in unit.slices:
            if s.tensor == name and not torch.equal(a[s.index()], b[s.index()]):
                return False
    return True
