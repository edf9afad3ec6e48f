"""FCVC: the fully convolutional captioner with coarse-to-fine and inherited attention (all Table 4 variants).

Input (Eq. 4): x_t = W_in [w_t ; g] + b_in + p_t -- the word embedding concatenated with the global
feature g = mean_n f_n, projected to d, plus a learned position embedding p_t (ConvS2S does the same; the
zero padding of the causal convolution only tells the first few steps where they are).

Each of the L layers (ConvS2S block, residuals scaled by sqrt(1/2) to keep the variance steady):

    y  = GLU(CausalConv(dropout(h)))                       # [R, T, d], step t sees steps t-w+1..t
    c  = TA(y) and/or IA(y, alpha)                          # per the layer plan (models/variants.py)
    y  = (y + c) * sqrt(1/2)                                # only when the layer attends
    h' = (y + h) * sqrt(1/2)

and the logits are W_out dropout(h_L). IA inherits alpha from the last TA layer at or below it (for
``fcvc-cf-ia`` the top TA layer of the lower half feeds every IA layer; for ``fcvc-ia``/``fcvc-all`` each
layer's own TA). The exposed ``frame_attn`` is that last TA layer's alpha, ``region_attn`` the last IA
layer's beta -- the weights Eq. 7 penalises.

The conv window w follows ``conv_mask`` (models/causal_conv.py): w = k for "causal" (ConvS2S; k = 5: steps
t-4..t, so 4 layers see 17 steps back to t-16), w = (k+1)//2 for "paper" (the kernel centred on t with
its right half masked; k = 5: t-2..t, 4 layers reach back to t-8). Attention never mixes steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fcvc_pipeline.errors import ConfigError, MismatchError
from fcvc_pipeline.models.attention import InheritedAttention, RegionMemory, TemporalAttention
from fcvc_pipeline.models.base import CaptionModel, VideoProjection, check_video_batch
from fcvc_pipeline.models.causal_conv import CausalConv1d
from fcvc_pipeline.models.config import ModelConfig
from fcvc_pipeline.models.state import ModelOutput, Rows, StepOutput, VideoBatch, default_video_index
from fcvc_pipeline.models.variants import LayerPlan

SQRT_HALF = math.sqrt(0.5)
REGION_MODES = ("auto", "project", "fold")


# -- what encode() keeps per video, and the decoder state per row ---------------------------------------------
@dataclass
class FcvcEncoded:
    frames: Tensor  # [B, N, d] projected frame features f_n
    global_in: Tensor  # [B, d] the global feature's share of x_t: W_in[:, d:] g + b_in
    frame_memory: list[tuple[Tensor, Tensor | None] | None]  # per layer: TA keys/values [B, H, N, dh]
    regions: RegionMemory | None  # [B, N*M, d or region_dim]

    @property
    def num_videos(self) -> int:
        return int(self.frames.shape[0])

    def index_select(self, idx: Tensor) -> "FcvcEncoded":
        pick = lambda t: None if t is None else t.index_select(0, idx)  # noqa: E731
        return FcvcEncoded(
            frames=pick(self.frames), global_in=pick(self.global_in),
            frame_memory=[None if m is None else (pick(m[0]), pick(m[1])) for m in self.frame_memory],
            regions=None if self.regions is None else self.regions.index_select(idx))


@dataclass
class FcvcState:
    """Per row: each layer's window of its last taps-1 inputs (None until the first step) and the position."""

    windows: list[Tensor | None]  # per layer [R, taps-1, d] (taps = k "causal", (k+1)//2 "paper")
    position: int  # index of the next input token (0 = <bos>)
    rows: Rows

    @property
    def video_index(self) -> Tensor:
        return self.rows.index

    def reorder(self, index: Tensor) -> "FcvcState":
        """Keep/duplicate rows (beam search picks parents); in place, returns self."""
        self.windows = [None if w is None else w.index_select(0, index) for w in self.windows]
        self.rows = Rows(self.rows.index.index_select(0, index), self.rows.num_videos)
        return self

    def renumber_videos(self, new_ids: Tensor, num_videos: int) -> "FcvcState":
        """After dropping videos from the encoding: old video id -> new id (rows of dropped videos must be gone)."""
        self.rows = Rows(new_ids.index_select(0, self.rows.index), num_videos)
        return self


# -- one conv layer --------------------------------------------------------------------------------------------
class FcvcLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, plan: LayerPlan, index: int):
        super().__init__()
        d = cfg.d_model
        self.plan, self.index = plan, index
        self.drop = nn.Dropout(cfg.dropout)
        self.conv = CausalConv1d(d, 2 * d, cfg.kernel_size, dropout=cfg.dropout, mask=cfg.conv_mask)
        self.temporal = TemporalAttention(d, cfg.heads, with_context=plan.temporal_context) if plan.temporal else None
        self.inherited = InheritedAttention(d) if plan.inherited else None

    def forward(self, h: Tensor, enc: FcvcEncoded, rows: Rows, alphas: list[Tensor | None]):
        """h [R, T, d] -> (h' [R, T, d], alpha [R, T, N] | None, beta [R, T, N, M] | None)."""
        y = F.glu(self.conv(self.drop(h)), dim=-1)
        return self._attend(y, h, enc, rows, alphas)

    def step(self, h: Tensor, window: Tensor | None, enc: FcvcEncoded, rows: Rows, alphas: list[Tensor | None]):
        """h [R, 1, d] (this step's input) -> (h', alpha, beta, next window)."""
        if window is None:
            window = self.conv.initial_window(h.shape[0], device=h.device, dtype=h.dtype)
        y, window = self.conv.step(window.to(h.dtype), h[:, 0])
        y = F.glu(y, dim=-1).unsqueeze(1)
        out, alpha, beta = self._attend(y, h, enc, rows, alphas)
        return out, alpha, beta, window

    def _attend(self, y: Tensor, residual: Tensor, enc: FcvcEncoded, rows: Rows, alphas: list[Tensor | None]):
        context, alpha, beta = None, None, None
        if self.temporal is not None:
            keys, values = enc.frame_memory[self.index]
            context, alpha = self.temporal(y, keys, values, rows)
        if self.inherited is not None:
            inherited = alpha if self.plan.alpha_from == self.index else alphas[self.plan.alpha_from]
            c, beta = self.inherited(y, inherited, enc.regions, rows)
            context = c if context is None else context + c
        if context is not None:
            y = (y + context) * SQRT_HALF
        return (y + residual) * SQRT_HALF, alpha, beta


# -- the model --------------------------------------------------------------------------------------------------
class FcvcCaptioner(CaptionModel):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        d = cfg.d_model
        self.plan = cfg.layer_plan()
        self.video = VideoProjection(cfg)
        self.region_proj = nn.Linear(cfg.region_dim, d) if cfg.uses_regions else None
        self.region_pos = (nn.Parameter(0.02 * torch.randn(cfg.num_regions, d))
                           if cfg.uses_regions and cfg.region_positions else None)
        self.embed = nn.Embedding(cfg.vocab_size, d, padding_idx=cfg.pad_id)
        self.positions = nn.Embedding(cfg.max_len + 1, d)
        self.input = nn.Linear(2 * d, d)  # Eq. 4: x_t = W_in [w_t ; g] + b_in
        self.layers = nn.ModuleList(FcvcLayer(cfg, p, i) for i, p in enumerate(self.plan))
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(d, cfg.vocab_size)
        ta = [i for i, p in enumerate(self.plan) if p.temporal]
        ia = [i for i, p in enumerate(self.plan) if p.inherited]
        self._frame_attn_layer = ta[-1] if ta else None
        self._region_attn_layer = ia[-1] if ia else None
        for emb in (self.embed, self.positions):
            nn.init.normal_(emb.weight, mean=0.0, std=0.1)
        with torch.no_grad():
            self.embed.weight[cfg.pad_id].zero_()

    # .. per video ..................................................................................................
    def encode(self, videos: VideoBatch, *, row_steps: int | None = None, region_mode: str = "auto") -> FcvcEncoded:
        cfg, d = self.config, self.config.d_model
        if region_mode not in REGION_MODES:
            raise ConfigError(f"region_mode must be one of {', '.join(REGION_MODES)} (got {region_mode!r})")
        f = self.drop(self.video(videos))  # [B, N, d]
        g = f.mean(dim=1)  # [B, d] global feature
        global_in = F.linear(g, self.input.weight[:, d:], self.input.bias)  # [B, d]
        memory = [layer.temporal.memory(f) if layer.temporal is not None else None for layer in self.layers]
        regions = None
        if self.region_proj is not None:
            check_video_batch(videos, cfg.frame_dim, cfg.clip_dim, cfg.region_dim)
            B, N, M, Dr = videos.regions.shape
            if region_mode == "auto":
                steps = row_steps if row_steps is not None else B * (cfg.max_len + 1)
                region_mode = choose_region_mode(B, N * M, Dr, d, steps, sum(p.inherited for p in self.plan))
            if self.region_pos is not None and M != self.region_pos.shape[0]:
                raise MismatchError(f"{M} regions per frame, but the model was built for {self.region_pos.shape[0]}")
            if region_mode == "project":  # the heavy op: [B, N*M, Dr] @ [Dr, d], once per video
                r = self.region_proj(videos.regions.reshape(B, N * M, Dr))  # [B, N*M, d]
                if self.region_pos is not None:
                    r = (r.view(B, N, M, d) + self.region_pos.to(r.dtype)).view(B, N * M, d)
                regions = RegionMemory(r, N)
            else:
                raw = videos.regions.reshape(B, N * M, Dr)
                dtype = _autocast_dtype(raw.device)
                regions = RegionMemory(raw.to(dtype) if dtype is not None else raw, N, self.region_proj,
                                       self.region_pos)
        return FcvcEncoded(frames=f, global_in=global_in, frame_memory=memory, regions=regions)

    # .. teacher forcing ............................................................................................
    def decode(self, encoded: FcvcEncoded, tokens: Tensor, video_index: Tensor | None = None) -> ModelOutput:
        R, T = tokens.shape
        if T > self.config.max_len + 1:
            raise ConfigError(f"captions of {T} input tokens exceed this model's max_len + 1 = "
                              f"{self.config.max_len + 1} positions")
        rows = Rows(default_video_index(video_index, R, encoded.num_videos, tokens.device), encoded.num_videos)
        h = self._inputs(tokens, torch.arange(T, device=tokens.device), rows.gather(encoded.global_in))
        alphas: list[Tensor | None] = [None] * len(self.layers)
        betas: list[Tensor | None] = [None] * len(self.layers)
        for i, layer in enumerate(self.layers):
            h, alphas[i], betas[i] = layer(h, encoded, rows, alphas)
        logits = self.out(self.drop(h))  # [R, T, V]
        return ModelOutput(logits=logits, frame_attn=self._pick(alphas, self._frame_attn_layer),
                           region_attn=self._pick(betas, self._region_attn_layer))

    def _inputs(self, tokens: Tensor, positions: Tensor, global_rows: Tensor) -> Tensor:
        """tokens [R, T], positions [T], global_rows [R, d] -> x [R, T, d] (Eq. 4 + positions)."""
        d = self.config.d_model
        words = F.linear(self.embed(tokens), self.input.weight[:, :d])  # [R, T, d]
        return self.drop(words + global_rows.unsqueeze(1) + self.positions(positions))

    @staticmethod
    def _pick(per_layer: list[Tensor | None], layer: int | None) -> Tensor | None:
        return None if layer is None else per_layer[layer]

    # .. incremental decoding ..........................................................................................
    def init_state(self, encoded: FcvcEncoded, video_index: Tensor) -> FcvcState:
        return FcvcState(windows=[None] * len(self.layers), position=0, rows=Rows(video_index, encoded.num_videos))

    def step(self, encoded: FcvcEncoded, state: FcvcState, last_tokens: Tensor) -> StepOutput:
        t = state.position
        if t > self.config.max_len:
            raise ConfigError(f"decoding step {t} is past this model's max_len ({self.config.max_len}) + <eos>")
        pos = torch.full((1,), t, dtype=torch.long, device=last_tokens.device)
        h = self._inputs(last_tokens.unsqueeze(1), pos, state.rows.gather(encoded.global_in))  # [R, 1, d]
        alphas: list[Tensor | None] = [None] * len(self.layers)
        betas: list[Tensor | None] = [None] * len(self.layers)
        windows = list(state.windows)
        for i, layer in enumerate(self.layers):
            h, alphas[i], betas[i], windows[i] = layer.step(h, windows[i], encoded, state.rows, alphas)
        log_probs = torch.log_softmax(self.out(h[:, 0]).float(), dim=-1)  # [R, V]
        state.windows, state.position = windows, t + 1
        fa, ra = self._pick(alphas, self._frame_attn_layer), self._pick(betas, self._region_attn_layer)
        return StepOutput(log_probs, None if fa is None else fa[:, 0], None if ra is None else ra[:, 0], state)


def choose_region_mode(videos: int, regions: int, region_dim: int, d: int, row_steps: int, ia_layers: int) -> str:
    """'project' (project every region once per video) or 'fold' (score raw regions), whichever costs
    fewer multiply-adds for this many caption steps reading these videos.

    project: videos * regions * region_dim * d  +  row_steps * ia_layers * 2 * regions * d
    fold:    row_steps * ia_layers * 2 * (regions * region_dim + region_dim * d)
    """
    project = videos * regions * region_dim * d + row_steps * ia_layers * 2 * regions * d
    fold = row_steps * ia_layers * 2 * (regions * region_dim + region_dim * d)
    return "project" if project <= fold else "fold"


def _autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype active for this device type, or None (raw regions are cast once, not per matmul)."""
    try:
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
    except TypeError:  # torch < 2.4: no device-type argument
        if device.type == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
    return None
