"""``fcvc train --model all``: the paper's Table 3/4 measured on your data.

Composes the train stage with the split captioner: trains every model (the five FCVC variants and the LSTM
baseline) with the same data, seed and budget (``stages/train.py``), captions the test videos that have
features (``inference.captioner.caption_split``: beam search with the beam size each run chose on its
validation split unless ``score_beam_size`` says otherwise), scores them with pycocoevalcap, and
writes the table in the paper's shape — BLEU-1..4, METEOR, ROUGE-L, CIDEr, #unk, the beam size and
training seconds per 10M parameters — as ``<workdir>/runs/ablation.md`` and ``ablation.json``. With
``scst`` each model's self-critical run (``<run>-scst``, started from that model's cross-entropy run) is
trained right after it and gets its own row (``<model> + SCST``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fcvc_pipeline import progress
from fcvc_pipeline.artifacts import atomic_write_json, atomic_write_text
from fcvc_pipeline.captions.vocabulary import load_captions, references_by_video
from fcvc_pipeline.errors import require
from fcvc_pipeline.evaluation.metrics import format_score_table, read_captions_file, score_captions
from fcvc_pipeline.features.settings import weights_identity
from fcvc_pipeline.features.store import FeatureStore
from fcvc_pipeline.inference.captioner import caption_split
from fcvc_pipeline.inference.options import DecodingOptions
from fcvc_pipeline.models import ABLATION_ORDER
from fcvc_pipeline.stages.train import TrainConfig, run_train
from fcvc_pipeline.workdir import Workdir


@dataclasses.dataclass
class AblationResult:
    table_markdown: str
    rows: list[dict[str, Any]]
    paths: dict[str, str]
    exit_code: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, **self.paths}


def run_ablation(cfg: TrainConfig) -> AblationResult:
    """Every model of ``ABLATION_ORDER`` with ``cfg``'s settings (``cfg.model`` is ignored; ``cfg.run``
    prefixes the run names)."""
    require(cfg.validate())
    w = Workdir(cfg.workdir)
    prefix = f"{cfg.run}-" if cfg.run else ""
    refs = references_by_video(load_captions(w.vocab, split="test"))
    rows, table_rows = [], []
    for name in ABLATION_ORDER:
        progress.log(f"== {name} ==")
        run = f"{prefix}{name}"
        plan = [(name, dataclasses.replace(cfg, model=name, run=run, scst=False, init=None))]
        if cfg.scst:
            plan.append((f"{name} + SCST", dataclasses.replace(cfg, model=name, run=f"{run}-scst", scst=True, init=run)))
        for label, run_cfg in plan:
            result = run_train(run_cfg)
            beam = DecodingOptions.from_json(result.decoding).override(beam_size=cfg.score_beam_size).beam_size
            captions = read_captions_file(caption_split(cfg.workdir, run_cfg.run, "test", beam_size=beam,
                                                        device=cfg.device))
            scores = score_captions(captions, {v: refs[v] for v in captions})
            sec_per_10m = result.seconds_per_epoch / (result.parameters / 1e7) if result.seconds_per_epoch else None
            row = {"model": label, "run": str(result.run), **{k: v for k, v in scores.items() if k != "warnings"},
                   "parameters": result.parameters, "epochs": result.epochs,
                   "seconds_per_epoch": result.seconds_per_epoch, "sec_per_10M_params": sec_per_10m,
                   "best_val_cider": result.best_val_cider, "beam_size": beam}
            rows.append(row)
            table_rows.append((label, {**scores, "beam": beam, "sec_per_10M_params": sec_per_10m}))
    features = weights_identity(FeatureStore.open(w.features).settings)
    table = format_score_table(table_rows, markdown=True, features=features)
    md_path, json_path = w.runs / "ablation.md", w.runs / "ablation.json"
    atomic_write_text(md_path, table + "\n")
    atomic_write_json(json_path, {"rows": rows, "seed": cfg.seed, "epochs": cfg.epochs, "max_steps": cfg.max_steps,
                                  "score_beam_size": cfg.score_beam_size, "features": features, "scst": cfg.scst})
    progress.log(table)
    progress.log(f"table written to {md_path} and {json_path}")
    return AblationResult(table_markdown=table, rows=rows, paths={"markdown": str(md_path), "json": str(json_path)})
