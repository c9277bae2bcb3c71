"""Exact Weight Patching: the measurements behind patch_in, knockout and anchor.

Definitions (also in the README):
  m(θ)      pooled mean log-probability of all response tokens of the probe set,
            teacher forced: Σ log p(token) / number of response tokens.
  patch_in  (m(B ⊕ E_u) − m(B)) / (m(E) − m(B))
  knockout  (m(E) − m(E ⊕ B_u)) / (m(E) − m(B))
  anchor    (a(B ⊕ E_u) − a(B)) / (a(E) − a(B)), a(θ) = mean over response-predicting
            positions of ⟨h_l(θ), v⟩, h_l the output of anchor block l and
            v = normalize(mean(h_l(E) − h_l(B))). Defined for units at or below l.

This module measures raw sums (Σ log p, Σ ⟨h, v⟩ per batch); ratios are formed in
`scores.build`. Work is planned as jobs and run per probe group so a killed run can
resume from a journal of finished (unit, group) jobs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from ..models.checkpoint import Checkpoint
from ..models.units import Unit
from ..probes import ProbeBatch
from .runner import LayerRunner, Trace
from .swap import WeightSwapper


@dataclass
class Baseline:
    """Unpatched statistics of one model over the probe set."""

    lp_sum: float = 0.0
    n: int = 0
    layer_sums: List[torch.Tensor] = field(default_factory=list)  # per batch: [L, H] Σh at response positions
    sq_norm: Optional[torch.Tensor] = None  # [L] Σ‖h‖²

    @property
    def m(self) -> float:
        return self.lp_sum / self.n

    def mean_states(self) -> torch.Tensor:
        return torch.stack(self.layer_sums).sum(0) / self.n  # [L, H]


def measure_baseline(runner: LayerRunner, batches: Sequence[ProbeBatch]) -> Baseline:
    """One full pass: m(θ) plus per-block mean states for anchor selection."""
    b = Baseline()
    with torch.no_grad():
        for batch in batches:
            tr = runner.trace(batch)
            b.lp_sum += float(runner.response_logprobs(tr.inputs[-1], batch).double().sum())
            b.n += batch.n_tokens
            sums, sq = [], []
            for h in tr.inputs[1:]:  # block outputs, one at a time to bound memory
                states = runner.response_states(h, batch).double()  # [N, H]
                sums.append(states.sum(0))
                sq.append((states ** 2).sum())
            b.layer_sums.append(torch.stack(sums))
            b.sq_norm = torch.stack(sq) if b.sq_norm is None else b.sq_norm + torch.stack(sq)
    return b


def measure_m(runner: LayerRunner, batches: Sequence[ProbeBatch]) -> Tuple[float, int]:
    """(Σ log p, n) over the response tokens: m(θ) without the anchor statistics."""
    lp, n = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            tr = runner.trace(batch, keep_inputs=False)
            lp += float(runner.response_logprobs(tr.inputs[-1], batch).double().sum())
            n += batch.n_tokens
    return lp, n


def choose_anchor_layer(base: Baseline, expert: Baseline, num_layers: int) -> int:
    """The documented default: the block whose output moves most between B and E
    relative to the base's spread, r(l) = ‖μ_E − μ_B‖ / sqrt(E‖h_B − μ_B‖²), over
    blocks 0..L-2 (the last block's output is the behavior itself, which patch_in
    already measures; with fewer than 3 blocks all blocks are eligible)."""
    mu_b, mu_e = base.mean_states(), expert.mean_states()
    spread = (base.sq_norm / base.n - (mu_b ** 2).sum(1)).clamp_min(1e-12).sqrt()
    ratio = (mu_e - mu_b).norm(dim=1) / spread
    eligible = num_layers - 1 if num_layers >= 3 else num_layers
    return int(torch.argmax(ratio[:eligible]))


@dataclass
class Anchor:
    layer: int
    v: torch.Tensor  # [H] unit vector, float64

    @classmethod
    def between(cls, base: Baseline, expert: Baseline, layer: int) -> "Anchor":
        d = expert.mean_states()[layer] - base.mean_states()[layer]
        return cls(layer, d / d.norm().clamp_min(1e-30))

    def value(self, bl: Baseline) -> float:
        """a(θ) from a baseline's per-batch sums, summed batch by batch like patched runs."""
        return sum(float(s[self.layer] @ self.v) for s in bl.layer_sums) / bl.n


@dataclass(frozen=True)
class Measurement:
    """Raw sums of one patched run over one probe group."""

    lp_sum: float
    n: int
    anchor_sum: Optional[float]  # Σ_batches ⟨Σh, v⟩, None when the unit sits above the anchor


def measure_unit(
    runner: LayerRunner,
    swapper: WeightSwapper,
    unit: Unit,
    source: Checkpoint,
    traces: Sequence[Trace],
    anchor: Optional[Anchor],
) -> Measurement:
    """Patch `unit` from `source`, run the affected suffix on every trace, restore."""
    capture = anchor.layer if anchor is not None and unit.layer <= anchor.layer else None
    lp, n, a_sum = 0.0, 0, 0.0
    with torch.no_grad(), swapper.patched([unit], source):
        for tr in traces:
            final, mid = runner.run_from(tr, unit.layer, capture=capture)
            lp += float(runner.response_logprobs(final, tr.batch).double().sum())
            n += tr.batch.n_tokens
            if capture is not None:
                states = runner.response_states(mid, tr.batch).double()
                a_sum += float(states.sum(0) @ anchor.v)  # type: ignore[union-attr]
    return Measurement(lp, n, a_sum if capture is not None else None)


def group_batches(batches: Sequence[ProbeBatch], runner: LayerRunner, hidden: int, budget_bytes: int,
                  elem_bytes: int = 4) -> List[List[int]]:
    """Split batch indices into groups whose traces fit in `budget_bytes` together.

    Each group is traced once per phase and then shared by every unit, so fewer,
    larger groups mean fewer full passes."""
    groups: List[List[int]] = [[]]
    used = 0
    for i, b in enumerate(batches):
        size = (runner.num_layers + 1) * b.input_ids.numel() * hidden * elem_bytes
        if groups[-1] and used + size > budget_bytes:
            groups.append([])
            used = 0
        groups[-1].append(i)
        used += size
    return groups


def run_phase(
    runner: LayerRunner,
    swapper: WeightSwapper,
    units: Sequence[Unit],
    source: Checkpoint,
    batches: Sequence[ProbeBatch],
    groups: Sequence[Sequence[int]],
    anchor: Optional[Anchor],
    done: Callable[[str, int], Optional[Measurement]],
    record: Callable[[str, int, Measurement], None],
    tick: Callable[[], None] = lambda: None,
) -> Dict[str, Measurement]:
    """Measure every unit on every group, skipping (unit, group) jobs already `done`.

    Returns per-unit measurements summed over groups in group order, so a resumed run
    adds exactly the same floats in the same order as an uninterrupted one.
    """
    per_group: Dict[Tuple[str, int], Measurement] = {}
    for g, idx in enumerate(groups):
        todo = [u for u in units if done(u.name, g) is None]
        for u in units:
            prev = done(u.name, g)
            if prev is not None:
                per_group[(u.name, g)] = prev
                tick()
        if not todo:
            continue
        with torch.no_grad():
            traces = [runner.trace(batches[i]) for i in idx]
        for u in todo:
            m = measure_unit(runner, swapper, u, source, traces, anchor)
            per_group[(u.name, g)] = m
            record(u.name, g, m)
            tick()
        del traces
    out = {}
    for u in units:
        parts = [per_group[(u.name, g)] for g in range(len(groups))]
        lp = 0.0
        a: Optional[float] = 0.0
        for p in parts:
            lp += p.lp_sum
            a = None if p.anchor_sum is None or a is None else a + p.anchor_sum
        out[u.name] = Measurement(lp, sum(p.n for p in parts), a)
    return out


def safe_ratio(num: float, den: float) -> float:
    if den == 0 or not math.isfinite(num / den):
        return 0.0
    return num / den


def iter_names(units: Iterable[Unit]) -> List[str]:
    return [t for u in units for t in u.tensors]
