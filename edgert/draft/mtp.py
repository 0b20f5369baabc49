"""Gemma 4's drafter ("multi-token prediction"; transformers' Gemma4AssistantForCausalLM, run as
its SinglePositionMultiTokenCandidateGenerator runs it): a four-layer decoder that guesses the
next tokens from the target's own state, at almost no cost in bytes.

One draft step, for the token t at position p (t sampled, not yet fed to the target):

    x = pre_projection([target embedding of t * sqrt(H_target), h])       h: the target's
    each layer: queries only, at position p, over the target's K/V           final-normed hidden
        (the last non-shared layer of the layer's type: E2B's 13 and 14)     where it drew t
    x = norm(x);  guess = argmax(head(x));  h = post_projection(x)

and the next step takes (guess, h) at the same position p. The head is the drafter's own tied
table, or, in the E2B/E4B drafters, that table narrowed by centroids: the top 32 of 2048
clusters, 4096 candidate tokens scored instead of 262,144.

A sliding layer's query sees the target's window as the cache holds it: the sliding_window
entries before p. (transformers' mask admits one more, sliding_window + 1 back, where the
states it passes hold them, as after a prefill; after a decode step they do not.)"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import numpy as np

from edgert import gemma4
from edgert.draft.adaptive import Adaptive
from edgert.errors import ArchitectureError
from edgert.files.loader import AssistantFile
from edgert.kernels import attention, rms_norm
from quant import QTensor, matmul

if TYPE_CHECKING:
    from edgert.model import Model, State

F32 = np.float32


class Head:
    """The drafter's LM head: its tied table (vocab, H), narrowed by centroids if it has them.

    With centroids, the table is copied once in cluster order, each cluster's rows contiguous:
    a step then scores its clusters with the matrix kernels on those blocks, reading 32 blocks
    of quantized rows, instead of gathering and dequantizing 4096 scattered rows (5 ms a step
    on E2B's; 0.13 of a decode step went there)."""

    def __init__(self, table: QTensor, centroids: QTensor | None, ordering: np.ndarray | None, top_k: int):
        self.table, self.centroids, self.ordering, self.top_k = table, centroids, ordering, top_k
        self.blocks = None
        if centroids is not None:
            per = ordering.shape[1]
            ordered = np.ascontiguousarray(table.raw[ordering.reshape(-1)])
            self.blocks = [QTensor(ordered[c * per:(c + 1) * per], table.qtype, (per, table.shape[1]))
                           for c in range(len(ordering))]

    def clusters(self, x: np.ndarray) -> np.ndarray:
        """The top_k clusters for the normed hidden x (H,)."""
        scores = matmul(x[None], self.centroids)[0]
        return np.argpartition(-scores, self.top_k - 1)[:self.top_k]

    def scored(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids, logits) of the tokens the head scores: those of the top clusters, or all."""
        if self.centroids is None:
            return np.arange(self.table.shape[0]), matmul(x[None], self.table)[0]
        top = self.clusters(x)
        return self.ordering[top].reshape(-1), np.concatenate([matmul(x[None], self.blocks[c])[0] for c in top])

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(vocab,) as Gemma4AssistantMaskedEmbedder gives them: tokens outside the chosen
        clusters get the least candidate logit minus 1."""
        ids, scored = self.scored(x)
        out = np.full(self.table.shape[0], scored.min() - F32(1), dtype=F32)
        out[ids] = scored
        return out

    def best(self, x: np.ndarray) -> int:
        ids, scored = self.scored(x)
        return int(ids[np.argmax(scored)])


class Assistant:
    """A drafter bound to its target model: the target layer each of its layers reads, checked."""

    def __init__(self, file: AssistantFile, target: "Model"):
        cfg, tcfg = file.config, target.config
        if tcfg.arch != "gemma4" or cfg.n_backbone != tcfg.n_embd or cfg.text.n_vocab != tcfg.n_vocab:
            raise ArchitectureError(
                f"{file.path} drafts for a Gemma 4 of width {cfg.n_backbone} and {cfg.text.n_vocab} tokens; "
                f"the model has width {tcfg.n_embd} and {tcfg.n_vocab} tokens: give the drafter made for it")
        lenders = {s.sliding: s for s in tcfg.layers if s.lends_kv}
        self.sources = []
        for s in cfg.text.layers:
            src = lenders.get(s.sliding)
            if src is None or (src.head_dim, src.n_kv_heads) != (s.head_dim, s.n_kv_heads):
                raise ArchitectureError(f"{file.path}: drafter layer {s.index} reads K/V of shape "
                                        f"({s.n_kv_heads}, {s.head_dim}) that the model does not lend")
            self.sources.append(src.index)
        self.path, self.config, self.target = file.path, cfg, target
        t = file.tensors
        self.weights = gemma4.load_weights(cfg.text, t)
        self.pre, self.post = t["nextn.pre_projection.weight"], t["nextn.post_projection.weight"]
        self.head = Head(t["token_embd.weight"], t.get("masked_embd_centroids.weight"), file.ordering,
                         cfg.centroid_top_k)

    def step(self, state: "State", token: int, hidden: np.ndarray, pos: int) -> tuple[np.ndarray, np.ndarray]:
        """One draft step for `token` at `pos` after the target's hidden (H_target,): the drafter's
        normed hidden (H,), for its head, and the hidden it hands to the next step (H_target,)."""
        cfg, w, target = self.config.text, self.weights, self.target
        e = gemma4.embed(target.config, target.weights, np.array([token]))
        x = matmul(np.concatenate([e, hidden[None].astype(F32)], axis=1), self.pre)
        p = np.array([pos])
        for s, lw, src in zip(cfg.layers, w.layers, self.sources):  # layers that borrow K/V, without PLE
            q, _, _ = gemma4.qkv(cfg, s, lw, x, p)
            window = target.config.sliding_window + 1 if s.sliding else 0
            a = attention(q, state.caches[src].view(pos), p, window, target.threads)
            x = gemma4.after_attention(cfg, lw, x, a, None)
        x = rms_norm(x, w.output_norm, cfg.rms_eps)
        return x[0], matmul(x, self.post)[0]


class Mtp(Adaptive):
    """Drafting with the model's drafter: `draft` runs it greedily from the target's state."""

    def __init__(self, model: "Model", k: int = 2, k_max: int = 8, patience: int = 4):
        if model.assistant is None:
            raise ValueError("draft='mtp' needs a drafter: load the model with drafter=PATH (--drafter), "
                             "the gemma4-assistant file converted from Google's *-assistant checkpoint")
        super().__init__(k, 1, k_max, patience)
        self.assistant = model.assistant

    def draft(self, state: "State", history: Sequence[int], room: int) -> list[int]:
        """Up to k guesses after history[-1], the token at state.pos drawn from state.hidden."""
        n = self.budget(room)
        token, hidden, guesses = int(history[-1]), state.hidden, []
        for _ in range(n):
            x, hidden = self.assistant.step(state, token, hidden, state.pos)
            token = self.assistant.head.best(x)
            guesses.append(token)
        return guesses
