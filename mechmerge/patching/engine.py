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
`patching.score.assemble`. Work is planned as jobs and run per probe group so a killed run can
resume from a journal of finished (unit, group) jobs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

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
    # per probe, for --bootstrap only: Σ log p [P] and Σh per block [P, L, H]
    lp_probe: Optional[torch.Tensor] = None
    layer_probe: Optional[torch.Tensor] = None

    @property
    def m(self) -> float:
        return self.lp_sum / self.n

    def mean_states(self) -> torch.Tensor:
        return torch.stack(self.layer_sums).sum(0) / self.n  # [L, H]


def per_probe(values: torch.Tensor, batch: ProbeBatch, n_probes: int) -> torch.Tensor:
    """Sum token values [N, ...] into their probes: [n_probes, ...] (float64, CPU)."""
    out = torch.zeros((n_probes, *values.shape[1:]), dtype=torch.float64)
    return out.index_add_(0, batch.probe_index.cpu(), values.double().cpu())


def measure_baseline(runner: LayerRunner, batches: Sequence[ProbeBatch], n_probes: int = 0) -> Baseline:
    """One full pass: m(θ) plus per-block mean states for anchor selection.

    With n_probes > 0 also the per-probe sums that --bootstrap resamples."""
    b = Baseline()
    with torch.no_grad():
        L, H = runner.num_layers, runner.hidden_size
        for batch in batches:
            # small per-block statistics live on the CPU (with a device_map the blocks' outputs
            # sit on different devices), in buffers allocated before the pass: small tensors
            # kept alive between the pass's large transients would pin the heap around them
            sums = torch.zeros(L, H, dtype=torch.float64)
            sq = torch.zeros(L, dtype=torch.float64)
            probe_sums = torch.zeros(n_probes, L, H, dtype=torch.float64) if n_probes else None

            def visit(layer: int, h: torch.Tensor) -> None:
                # each block's output as the pass produces it: the pass never holds all of
                # them (exact scoring's baselines peaked above its patching phase before)
                states = runner.response_states(h, batch).double()  # [N, H]
                sums[layer] = states.sum(0).cpu()
                sq[layer] = (states ** 2).sum().cpu()
                if probe_sums is not None:
                    probe_sums[:, layer] = per_probe(states, batch, n_probes)

            tr = runner.trace(batch, keep_inputs=False, visit=visit)
            lp = runner.response_logprobs(tr.inputs[-1], batch)
            b.lp_sum += float(lp.double().sum())
            b.n += batch.n_tokens
            b.layer_sums.append(sums)
            b.sq_norm = sq if b.sq_norm is None else b.sq_norm + sq
            if n_probes:
                lp_p, lay_p = per_probe(lp, batch, n_probes), probe_sums
                b.lp_probe = lp_p if b.lp_probe is None else b.lp_probe + lp_p
                b.layer_probe = lay_p if b.layer_probe is None else b.layer_probe + lay_p
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

    def per_probe(self, bl: Baseline) -> Optional[torch.Tensor]:
        """Σ ⟨h, v⟩ of each probe [P] (bootstrap runs only)."""
        return None if bl.layer_probe is None else bl.layer_probe[:, self.layer] @ self.v


@dataclass(frozen=True)
class Measurement:
    """Raw sums of one patched run over one probe group."""

    lp_sum: float
    n: int
    anchor_sum: Optional[float]  # Σ_batches ⟨Σh, v⟩, None when the unit sits above the anchor
    lp_probe: Optional[Tuple[float, ...]] = None  # per probe Σ log p (--bootstrap), zeros outside the group
    a_probe: Optional[Tuple[float, ...]] = None  # per probe Σ ⟨h, v⟩ (--bootstrap)


def measure_unit(
    runner: LayerRunner,
    swapper: WeightSwapper,
    unit: Unit,
    source: Checkpoint,
    traces: Sequence[Trace],
    anchor: Optional[Anchor],
    n_probes: int = 0,
) -> Measurement:
    """Patch `unit` from `source`, run the affected suffix on every trace, restore.

    With n_probes > 0 the sums are also kept per probe, for --bootstrap."""
    capture = anchor.layer if anchor is not None and unit.layer <= anchor.layer else None
    lp, n, a_sum = 0.0, 0, 0.0
    lp_p = torch.zeros(n_probes, dtype=torch.float64)
    a_p = torch.zeros(n_probes, dtype=torch.float64)
    with torch.no_grad(), swapper.patched([unit], source):
        for tr in traces:
            final, mid = runner.run_from(tr, unit.layer, capture=capture)
            tok_lp = runner.response_logprobs(final, tr.batch)
            lp += float(tok_lp.double().sum())
            n += tr.batch.n_tokens
            if n_probes:
                lp_p += per_probe(tok_lp, tr.batch, n_probes)
            if capture is not None:
                states = runner.response_states(mid, tr.batch).double()
                v = anchor.v.to(states.device)  # type: ignore[union-attr]
                a_sum += float(states.sum(0) @ v)
                if n_probes:
                    a_p += per_probe(states @ v, tr.batch, n_probes)
    probe = tuple(lp_p.tolist()) if n_probes else None
    a_probe = tuple(a_p.tolist()) if n_probes and capture is not None else None
    return Measurement(lp, n, a_sum if capture is not None else None, probe, a_probe)


def group_batches(batches: Sequence[ProbeBatch], runner: LayerRunner, budget_bytes: int,
                  elem_bytes: int = 4) -> List[List[int]]:
    """Split batch indices into groups whose traces fit in `budget_bytes` together.

    Each group is traced once per phase and then shared by every unit, so fewer,
    larger groups mean fewer full passes."""
    groups: List[List[int]] = [[]]
    used = 0
    for i, b in enumerate(batches):
        size = (runner.num_layers + 1) * b.input_ids.numel() * runner.hidden_size * elem_bytes
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
    n_probes: int = 0,
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
            m = measure_unit(runner, swapper, u, source, traces, anchor, n_probes)
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
        out[u.name] = Measurement(lp, sum(p.n for p in parts), a, _add(p.lp_probe for p in parts),
                                  _add(p.a_probe for p in parts))
    return out


def _add(vectors) -> Optional[Tuple[float, ...]]:
    """Elementwise sum of per-probe vectors (each probe lives in one group)."""
    vs = list(vectors)
    if not vs or any(v is None for v in vs):
        return None
    return tuple(float(sum(col)) for col in zip(*vs))


def safe_ratio(num: float, den: float) -> float:
    if den == 0 or not math.isfinite(num / den):
        return 0.0
    return num / den
