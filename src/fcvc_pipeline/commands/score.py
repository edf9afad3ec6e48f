"""``fcvc score``: BLEU-1..4, METEOR, ROUGE-L, CIDEr and #unk of a split's captions (pycocoevalcap)."""

from __future__ import annotations

from pathlib import Path

import click

from fcvc_pipeline.commands.common import Choice, common_options, complete_run, run_and_exit


@click.command()
@common_options
@click.option("--run", "run_name", default=None, shell_complete=complete_run,
              help="Run under <workdir>/runs whose best checkpoint captions the split "
                   "(default: fcvc-cf-ia, or the only run).")
@click.option("--split", default="test", show_default=True, type=Choice(["train", "val", "test"]),
              help="Which split's references to score against.")
@click.option("--captions", "captions_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Score this file instead of captioning the split: the `fcvc caption --json` list, "
                   "a {video: caption} object, or JSON Lines of {video, caption}.")
@click.option("--beam-size", type=int, default=None,
              help="Beam size when captioning the split (default: the one `fcvc train` chose on validation).")
@click.option("--max-len", type=int, default=None, help="Longest caption when captioning the split (default: the model's).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N (captioning only).")
def score(workdir: Path, json_out: bool, verbose: bool, run_name: str | None, split: str,
          captions_file: Path | None, beam_size: int | None, max_len: int | None, device: str):
    """Score captions of a split against its raw references with pycocoevalcap.

    Prints the paper-style table (x100) on stderr; --json prints the raw values (Bleu_1..Bleu_4,
    METEOR, ROUGE_L, CIDEr, unk_count, videos) and the captions file scored. Without Java, BLEU,
    ROUGE-L and CIDEr use fcvc's Python tokenizer and METEOR is reported as null.

    \b
    Examples:
      fcvc score                                  # best checkpoint of fcvc-cf-ia on the test split
      fcvc score --run lstm --split val
      fcvc score --captions my-captions.json --json
    """
    from fcvc_pipeline.stages.score import ScoreConfig, run_score  # noqa: PLC0415 -- torch loads only when the command runs, so --help stays instant

    cfg = ScoreConfig(workdir=workdir, run=run_name, split=split, captions=captions_file, beam_size=beam_size,
                      max_len=max_len, device=device)
    run_and_exit(lambda: run_score(cfg), json_out=json_out, verbose=verbose)
