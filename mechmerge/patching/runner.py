"""Run a causal LM from any decoder block onward, reusing what happened below it.

A unit in block l cannot change anything below l, so after one full forward pass of
the unpatched model we keep the input of every block and re-run only blocks l..L-1
plus the tail (final norm, lm_head) when a unit of block l is patched.

The runner is architecture-agnostic because it does not rebuild HF's forward: it
records, with forward pre-hooks, the exact positional and keyword arguments that the
model's own forward passed to each block (attention masks, rotary or sliding-window
position embeddings, Gemma's scaled embeddings are all already applied) and replays
them with a different hidden state. The only per-family facts it needs are where the
blocks, the final norm and the lm_head live (`families.json`), and the config's final
logit softcapping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from ..models.families import Family
from ..probes import ProbeBatch

# Rows of logits computed at once: bounds the [rows, vocab] float32 buffer and its
# log-softmax to 16 MB each (Gemma's 262k vocab: 16 rows); larger chunks were not faster
# on CPU and cost a few hundred MB of peak memory on SmolLM2.
LOGIT_CHUNK_ELEMENTS = 4 * 1024 * 1024


def _get(model: torch.nn.Module, path: str) -> Any:
    obj: Any = model
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass
class Trace:
    """What one unpatched forward pass leaves behind.

    inputs[l]: [B, T, H] hidden state entering block l; inputs[L] enters the final norm.
    kwargs[l]: the other arguments HF passed to block l (masks, position embeddings...).
    """

    batch: ProbeBatch
    inputs: List[torch.Tensor]
    args: List[Tuple[Any, ...]]
    kwargs: List[Dict[str, Any]]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.inputs)


class LayerRunner:
    def __init__(self, model: torch.nn.Module, family: Family):
        self.model = model
        self.family = family
        self.blocks = _get(model, family.layers)
        self.final_norm = _get(model, family.final_norm)
        self.lm_head = _get(model, family.lm_head)
        self.softcap = getattr(model.config, "final_logit_softcapping", None)
        self.num_layers = len(self.blocks)
        self.hidden_size = int(model.config.get_text_config().hidden_size)
        self.logit_chunk = max(1, LOGIT_CHUNK_ELEMENTS // self.lm_head.weight.shape[0])  # rows per tail chunk
        # (device, dtype, slot) -> [chunk, vocab] buffer reused by every no-grad tail pass; slots: logits,
        # log-softmax, float32 copy of low-precision logits. See _tail_buffer.
        self._tail_buffers: Dict[Tuple[torch.device, torch.dtype, int], torch.Tensor] = {}

    # -- full pass --------------------------------------------------------------------
    def trace(self, batch: ProbeBatch, keep_inputs: bool = True,
              visit: Optional[Callable[[int, torch.Tensor], None]] = None) -> Trace:
        """Run the unpatched backbone once, recording every block's inputs.

        With keep_inputs=False only the embeddings' output and the final-norm input are
        kept; `visit(l, h)` sees each block's output h (l = 0..L-1) as it is produced, so
        statistics over all blocks need not hold all of them at once."""
        L = self.num_layers
        inputs: List[Optional[torch.Tensor]] = [None] * (L + 1)
        args: List[Tuple] = [()] * L
        kwargs: List[Dict] = [{}] * L
        # Kept inputs are copied into one [L+1, B, T, H] buffer allocated up front. Why: each
        # block's output, kept where the forward allocated it, pins a piece of glibc's heap
        # between the block's freed temporaries, and holding a trace grew the resident size
        # by ~1.7x its bytes (by a different amount every run). Not under autograd
        # (attribution backpropagates through the kept tensors) and not across devices.
        store: List[torch.Tensor] = []

        def keep(i: int, hidden: torch.Tensor) -> None:
            if torch.is_grad_enabled():
                inputs[i] = hidden
                return
            if not store:
                store.append(hidden.new_empty((L + 1, *hidden.shape)))
            buf = store[0]
            if hidden.device != buf.device or hidden.dtype != buf.dtype or hidden.shape != buf.shape[1:]:
                inputs[i] = hidden
            else:
                inputs[i] = buf[i].copy_(hidden)

        def block_hook(i):
            def hook(module, a, kw):
                hidden = a[0] if a else kw["hidden_states"]
                if keep_inputs:
                    keep(i, hidden)
                elif i == 0:
                    inputs[i] = hidden
                if visit is not None and i > 0:
                    visit(i - 1, hidden)
                args[i] = a[1:] if a else ()
                kwargs[i] = {k: v for k, v in kw.items() if k != "hidden_states"}
            return hook

        def norm_hook(module, a):
            if keep_inputs:
                keep(L, a[0])
            else:
                inputs[L] = a[0]
            if visit is not None:
                visit(L - 1, a[0])

        handles = [b.register_forward_pre_hook(block_hook(i), with_kwargs=True) for i, b in enumerate(self.blocks)]
        handles.append(self.final_norm.register_forward_pre_hook(norm_hook))
        try:
            self.model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        finally:
            for h in handles:
                h.remove()
        return Trace(batch, inputs, args, kwargs)  # type: ignore[arg-type]

    # -- partial pass -----------------------------------------------------------------
    def run_from(self, trace: Trace, start: int, capture: Optional[int] = None
                 ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Blocks start..L-1 from the recorded input of block `start`.

        Returns (final-norm input [B,T,H], output of block `capture` or None when
        `capture` < start: that block is unaffected and its recorded output stands).
        start = -1 reruns everything including the embeddings.
        """
        if start < 0:
            return self._full(trace, capture)
        hidden = trace.inputs[start]
        captured = None
        for i in range(start, self.num_layers):
            out = self.blocks[i](hidden, *trace.args[i], **trace.kwargs[i])
            hidden = out[0] if isinstance(out, tuple) else out
            if capture == i:
                captured = hidden
        return hidden, captured

    def _full(self, trace: Trace, capture: Optional[int]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        # keep only what is returned: holding every block input again, next to the traces
        # already held, would double the activations while the embedding unit is measured
        kept: List[torch.Tensor] = []

        def visit(layer: int, h: torch.Tensor) -> None:
            if layer == capture:
                kept.append(h)

        fresh = self.trace(trace.batch, keep_inputs=False, visit=visit if capture is not None else None)
        return fresh.inputs[self.num_layers], (kept[0] if kept else None)

    def block_output(self, trace: Trace, layer: int) -> torch.Tensor:
        """Recorded output of block `layer` (= input of the next block or of the final norm)."""
        return trace.inputs[layer + 1]

    # -- tail -------------------------------------------------------------------------
    def response_logprobs(self, final_input: torch.Tensor, batch: ProbeBatch) -> torch.Tensor:
        """Log-probability of each response token, [N], from the final-norm input [B,T,H].

        Only the positions that predict response tokens go through the norm and lm_head,
        in chunks, so the cost does not scale with the prompt and memory stays bounded
        for large vocabularies.
        """
        return self.response_scores(final_input, batch)[0]

    def response_scores(self, final_input: torch.Tensor, batch: ProbeBatch) -> Tuple[torch.Tensor, torch.Tensor]:
        """(log-probability [N], whether the token is the argmax [N]) of each response token."""
        dev = final_input.device  # the last block's device when a device_map spreads the model
        h = final_input[batch.rows.to(dev), batch.positions.to(dev)]
        targets = batch.targets.to(dev)
        chunk = self.logit_chunk
        reuse = not torch.is_grad_enabled() and type(self.lm_head) is torch.nn.Linear
        lps, hits = [], []
        for s in range(0, h.shape[0], chunk):
            x = self.final_norm(h[s: s + chunk])
            logits = self._logits_into_buffer(x) if reuse else self.lm_head(x).float()
            tgt = targets[s: s + chunk, None].to(logits.device)
            if self.softcap:
                if reuse:
                    logits.div_(self.softcap).tanh_().mul_(self.softcap)
                else:
                    logits = torch.tanh(logits / self.softcap) * self.softcap
            out = self._tail_buffer(logits.shape[0], logits, 1) if reuse else None
            lp = torch.log_softmax(logits, dim=-1, out=out)
            lps.append(lp.gather(1, tgt).squeeze(1))
            hits.append(logits.argmax(-1) == tgt.squeeze(1))
        if not lps:
            return h.new_zeros(0), torch.zeros(0, dtype=torch.bool, device=h.device)
        return torch.cat(lps), torch.cat(hits)  # on the lm_head's device

    def _tail_buffer(self, rows: int, like: torch.Tensor, slot: int, dtype: Optional[torch.dtype] = None
                     ) -> torch.Tensor:
        """A [rows, vocab] view of a buffer kept across calls.

        Why: fresh 16 MB logits and log-softmax tensors per chunk fragment glibc's heap
        (the small per-chunk results land between the freed blocks), and one scoring pass
        grew the resident size by 150-200 MB for 32 MB live, by a different amount in
        every run. Writing into the same buffers (out=) keeps the tail's memory fixed;
        the kernels are the same, so the numbers are bit-identical."""
        dtype = dtype or like.dtype
        key = (like.device, dtype, slot)
        buf = self._tail_buffers.get(key)
        if buf is None:
            buf = torch.empty(self.logit_chunk, self.lm_head.weight.shape[0], device=like.device, dtype=dtype)
            self._tail_buffers[key] = buf
        return buf[:rows]

    def _logits_into_buffer(self, x: torch.Tensor) -> torch.Tensor:
        """lm_head(x) as float32, written into a reused buffer (no-grad passes only)."""
        w, b = self.lm_head.weight, self.lm_head.bias
        x = x.to(w.device)  # what accelerate's hook does when a device_map spreads the model
        out = self._tail_buffer(x.shape[0], w, 0)
        if b is None:
            torch.mm(x, w.t(), out=out)
        else:
            torch.addmm(b, x, w.t(), out=out)
        if out.dtype == torch.float32:
            return out
        return self._tail_buffer(x.shape[0], w, 2, torch.float32).copy_(out)

    def response_states(self, hidden: torch.Tensor, batch: ProbeBatch) -> torch.Tensor:
        """Hidden states at the positions that predict response tokens, [N, H]."""
        return hidden[batch.rows.to(hidden.device), batch.positions.to(hidden.device)]
