"""Temporal attention over frames (Eq. 5) and inherited attention over regions (Eq. 6).

Both take queries for R caption rows and T steps, ``y`` [R, T, d], and per-video memories computed once
per video. Softmaxes run in float32 (bf16 autocast is fine for the matrix products); the returned
weights are float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fcvc_pipeline.models.state import Rows


class TemporalAttention(nn.Module):
    """Eq. 5: multi-head attention from each step to the N frame features.

    alpha^h_{t,n} = softmax_n((y_t W^Q_h)(f_n W^K_h)^T / sqrt(d_k)),  head_h = sum_n alpha^h_{t,n} f_n W^V_h,
    TA(y_t) = Concat(head_1..head_H) W^O.  The frame weights kept for IA, the loss and visualisation are
    alpha_{t,n} = mean_h alpha^h_{t,n}.  With ``with_context=False`` only the weights are computed (the
    value and output projections do not exist): the ``fcvc-ia`` layers use TA solely to feed IA.
    """

    def __init__(self, d: int, heads: int, *, with_context: bool = True):
        super().__init__()
        self.heads, self.d_head = heads, d // heads
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d)
        self.value = nn.Linear(d, d) if with_context else None
        self.out = nn.Linear(d, d) if with_context else None

    def memory(self, frames: Tensor) -> tuple[Tensor, Tensor | None]:
        """Per-video keys and values from frame features [B, N, d] -> ([B, H, N, dh], [B, H, N, dh] | None)."""
        B, N, _ = frames.shape
        split = lambda t: t.view(B, N, self.heads, self.d_head).transpose(1, 2)  # noqa: E731
        return split(self.key(frames)), (split(self.value(frames)) if self.value is not None else None)

    def forward(self, y: Tensor, keys: Tensor, values: Tensor | None, rows: Rows) -> tuple[Tensor | None, Tensor]:
        """y [R, T, d] -> (context [R, T, d] or None, alpha [R, T, N] float32)."""
        R, T, _ = y.shape
        q = self.query(y).view(R, T, self.heads, self.d_head).transpose(1, 2)  # [R, H, T, dh]
        k = rows.gather(keys)  # [R, H, N, dh]
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.d_head))  # [R, H, T, N]
        weights = torch.softmax(scores.float(), dim=-1)
        alpha = weights.mean(dim=1)  # [R, T, N]
        if values is None:
            return None, alpha
        v = rows.gather(values)  # [R, H, N, dh]
        heads = torch.matmul(weights.to(v.dtype), v)  # [R, H, T, dh]
        context = self.out(heads.transpose(1, 2).reshape(R, T, -1))  # [R, T, d]
        return context, alpha


@dataclass
class RegionMemory:
    """The region features of B videos as IA reads them.

    ``features`` [B, N*M, D]. Either already projected to d (``projection`` None, D = d), or raw
    (D = region_dim) with ``projection`` the linear map r_ij = W_r rho_ij + b_r that IA folds into its
    query and applies to its weighted sum instead (see :class:`InheritedAttention`).
    """

    features: Tensor
    num_frames: int
    projection: nn.Linear | None = None
    positions: Tensor | None = None  # [M, d] grid-cell embeddings still to add (raw features only)

    @property
    def num_regions(self) -> int:
        return self.features.shape[1] // self.num_frames

    def index_select(self, idx: Tensor) -> "RegionMemory":
        return RegionMemory(self.features.index_select(0, idx), self.num_frames, self.projection, self.positions)


class InheritedAttention(nn.Module):
    """Eq. 6: region weights inside each frame, frame weights inherited from temporal attention below.

    beta_{t,i,j} = softmax_j((y_t W^Q)(r_ij W^K)^T / sqrt(d_k)),  v_t = sum_i alpha_{t,i} sum_j beta_{t,i,j} r_ij,
    IA(y_t) = v_t W^O.  A single head with d_k = d (TA already gives several views of the frames; IA's job
    is to pick regions inside the frames TA chose).

    Computation: the key projection is folded into the query, q'_t = (y_t W^Q) W^K^T, so scores are
    q'_t . r_ij and no per-region key tensor is ever formed (W^K has no bias: it would add the same
    constant to every score and cancel in the softmax). When the regions are raw (``projection`` set),
    W_r is folded in the same way -- q''_t = q'_t W_r scores raw regions, and W_r is applied once to the
    weighted sum of raw regions (sum_ij alpha beta = 1, so the bias comes out exactly) -- which is cheaper
    than projecting all N*M regions when few caption steps read them.
    """

    def __init__(self, d: int):
        super().__init__()
        self.scale = 1.0 / math.sqrt(d)
        self.query = nn.Linear(d, d)
        self.key = nn.Linear(d, d, bias=False)
        self.out = nn.Linear(d, d)

    def forward(self, y: Tensor, alpha: Tensor, regions: RegionMemory, rows: Rows) -> tuple[Tensor, Tensor]:
        """y [R, T, d], alpha [R, T, N] -> (context [R, T, d], beta [R, T, N, M] float32)."""
        R, T, _ = y.shape
        N, M = regions.num_frames, regions.num_regions
        feats = regions.features  # [B, N*M, D]
        q_d = self.query(y) @ self.key.weight  # [R, T, d]
        q = q_d @ regions.projection.weight if regions.projection is not None else q_d  # [R, T, region_dim]
        scores = torch.bmm(rows.group(q.to(feats.dtype)), feats.transpose(1, 2))  # [B, C*T, N*M]
        scores = rows.ungroup(scores, T).view(R, T, N, M).float()
        if regions.positions is not None:  # q'_t . P_j, the same for every frame
            scores = scores + (q_d.float() @ regions.positions.float().t()).unsqueeze(2)
        beta = torch.softmax(scores * self.scale, dim=-1)  # within each frame
        weights = (alpha.unsqueeze(-1) * beta).view(R, T, N * M)  # alpha_{t,i} beta_{t,i,j}
        pooled = torch.bmm(rows.group(weights.to(feats.dtype)), feats)  # [B, C*T, D]
        pooled = rows.ungroup(pooled, T)  # [R, T, D]
        if regions.projection is not None:
            pooled = regions.projection(pooled)  # W_r (sum w rho) + b_r = sum w r, as sum w = 1
        if regions.positions is not None:  # + sum_ij w_ij P_j
            cell_weights = weights.view(R, T, N, M).sum(dim=2)  # [R, T, M]
            pooled = pooled + (cell_weights @ regions.positions.float()).to(pooled.dtype)
        return self.out(pooled), beta
