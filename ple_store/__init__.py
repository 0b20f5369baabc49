"""Per-layer embedding (PLE) rows, read on demand from the table in the model file.

E2B's PLE table is 262144 x (35 x 256) values, nearly half of the model; a token
needs one row of it. The table stays where the model file maps it; `rows` reads
and dequantizes only the rows asked for, with the sqrt(dim) scale fused."""

from __future__ import annotations

import numpy as np

from quant import QTensor


class PLEStore:
    """Rows of the packed table (n_vocab, n_layer * dim) as (n, n_layer, dim) float32."""

    def __init__(self, table: QTensor, n_layer: int, dim: int):
        if table.shape[1] != n_layer * dim:
            raise ValueError(f"PLE table has {table.shape[1]} columns, expected {n_layer} x {dim}")
        self.table, self.n_layer, self.dim = table, n_layer, dim
        self.scale = np.float32(dim ** 0.5)  # Gemma4TextScaledWordEmbedding's embed_scale
        self.lookups = 0

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """(n,) token ids -> (n, n_layer, dim) scaled rows."""
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.table.shape[0]):
            raise IndexError(f"token id out of the PLE table's range 0..{self.table.shape[0] - 1}")
        self.lookups += len(ids)
        rows = self.table.rows(ids) * self.scale
        return rows.reshape(len(ids), self.n_layer, self.dim)
