"""The paper's LSTM baseline (Eqs. 1-3): an LSTM encodes the frames, its final state starts the decoder.

    f_n = W_f [pooled_n ; clip_n] + b                    (the same projection as FCVC, VideoProjection)
    h^enc_n = LSTM_enc(h^enc_{n-1}, f_n)                 Eq. 1
    h_0 = h^enc_N;  h_t = LSTM_dec(h_{t-1}, w_t)          Eq. 2 (every layer's (h, c) is handed over)
    p(y_t | V, y_<t) = softmax(W_out dropout(h_t))        Eq. 3 is its negative log-likelihood

By default the encoder reads f_n exactly as Eq. 1 has it: no frame-position embedding (the LSTM reads the
frames in order, so positions are redundant), i.e. ``ModelConfig.use_frame_positions`` is False for the
LSTM. With ``frame_positions=True`` -- set explicitly, as in every config saved before the option became
per-variant -- f_n gets FCVC's learned embedding p_n added (``video.position``, [num_frames, d]) and old
checkpoints load unchanged. The word input is the embedding w_t alone (no position embedding, no global
feature). No attention: ``frame_attn`` and ``region_attn`` are None. The decoder state is the LSTM's (h, c).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fcvc_pipeline.models.base import CaptionModel, VideoProjection
from fcvc_pipeline.models.config import ModelConfig
from fcvc_pipeline.models.state import ModelOutput, StepOutput, VideoBatch, default_video_index


@dataclass
class LstmEncoded:
    h: Tensor  # [L, B, d] final encoder state per layer
    c: Tensor  # [L, B, d]

    @property
    def num_videos(self) -> int:
        return int(self.h.shape[1])

    def index_select(self, idx: Tensor) -> "LstmEncoded":
        return LstmEncoded(self.h.index_select(1, idx), self.c.index_select(1, idx))


@dataclass
class LstmState:
    h: Tensor  # [L, R, d]
    c: Tensor  # [L, R, d]
    video_index: Tensor  # [R]

    def reorder(self, index: Tensor) -> "LstmState":
        """Keep/duplicate rows (beam search picks parents); in place, returns self."""
        self.h, self.c = self.h.index_select(1, index), self.c.index_select(1, index)
        self.video_index = self.video_index.index_select(0, index)
        return self

    def renumber_videos(self, new_ids: Tensor, num_videos: int) -> "LstmState":
        self.video_index = new_ids.index_select(0, self.video_index)
        return self


class LstmCaptioner(CaptionModel):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        d, layers = cfg.d_model, cfg.lstm_layers
        inner_dropout = cfg.dropout if layers > 1 else 0.0
        self.video = VideoProjection(cfg)
        self.encoder = nn.LSTM(d, d, num_layers=layers, batch_first=True, dropout=inner_dropout)
        self.embed = nn.Embedding(cfg.vocab_size, d, padding_idx=cfg.pad_id)
        self.decoder = nn.LSTM(d, d, num_layers=layers, batch_first=True, dropout=inner_dropout)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(d, cfg.vocab_size)
        nn.init.normal_(self.embed.weight, mean=0.0, std=0.1)
        with torch.no_grad():
            self.embed.weight[cfg.pad_id].zero_()

    def encode(self, videos: VideoBatch, *, row_steps: int | None = None, region_mode: str = "auto") -> LstmEncoded:
        f = self.drop(self.video(videos))  # [B, N, d]
        _, (h, c) = self.encoder(f)  # [L, B, d] each
        return LstmEncoded(h, c)

    def decode(self, encoded: LstmEncoded, tokens: Tensor, video_index: Tensor | None = None) -> ModelOutput:
        R, _ = tokens.shape
        vi = default_video_index(video_index, R, encoded.num_videos, tokens.device)
        h0, c0 = encoded.h.index_select(1, vi), encoded.c.index_select(1, vi)
        # padding only trails the caption, and the LSTM is causal, so no packing is needed
        y, _ = self.decoder(self.drop(self.embed(tokens)), (h0, c0))  # [R, T, d]
        return ModelOutput(logits=self.out(self.drop(y)))

    def init_state(self, encoded: LstmEncoded, video_index: Tensor) -> LstmState:
        return LstmState(encoded.h.index_select(1, video_index), encoded.c.index_select(1, video_index), video_index)

    def step(self, encoded: LstmEncoded, state: LstmState, last_tokens: Tensor) -> StepOutput:
        x = self.drop(self.embed(last_tokens.unsqueeze(1)))  # [R, 1, d]
        y, (state.h, state.c) = self.decoder(x, (state.h, state.c))
        log_probs = torch.log_softmax(self.out(y[:, 0]).float(), dim=-1)
        return StepOutput(log_probs, None, None, state)
