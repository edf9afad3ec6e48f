"""``fcvc vocab ANNOTATIONS``: a thin Click wrapper over :func:`fcvc_pipeline.stages.vocab.run_vocab`."""

from __future__ import annotations

from pathlib import Path

import click

from fcvc_pipeline.commands.common import Choice, common_options, run_and_exit

_FORMATS = ("auto", "msvd-csv", "msrvtt-json", "coco-json", "csv", "jsonl")


@click.command()
@common_options
@click.argument("annotations", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--format", "fmt", type=Choice(_FORMATS), default="auto", show_default=True,
              help="Annotation format; auto looks at the content.")
@click.option("--min-count", type=int, default=2, show_default=True,
              help="Training words seen fewer times become <unk>.")
@click.option("--max-len", type=int, default=20, show_default=True,
              help="Cut training targets to this many words (references are never cut).")
@click.option("--split-file", type=click.Path(path_type=Path),
              help="Splits: 'video_id split' lines, JSON, or (MSVD) a clip folder/list for the standard split.")
@click.option("--force", is_flag=True, help="Rebuild even when the output is up to date.")
def vocab(workdir: Path, json_out: bool, verbose: bool, annotations: Path, fmt: str, min_count: int, max_len: int,
          split_file: Path | None, force: bool) -> None:
    """Captions -> normalised tokens -> vocabulary + split-aware caption table.

    \b
    Formats: the MSVD corpus CSV (English rows, standard 1200/100/670 split),
    MSR-VTT videodatainfo.json, COCO-style caption JSON, and CSV/JSONL of
    video_id, caption[, split]. Writes WORKDIR/vocab/.

    \b
    Examples:
      fcvc vocab data/sample/annotations.json
      fcvc vocab MSR-VTT/train_val_videodatainfo.json --min-count 3
      fcvc vocab msvd/video_corpus.csv --split-file msvd/YouTubeClips/
    """
    from fcvc_pipeline.stages.vocab import VocabConfig, run_vocab  # noqa: PLC0415 -- torch loads only when the command runs, so --help stays instant

    cfg = VocabConfig(annotations=annotations, workdir=workdir, format=fmt, min_count=min_count,
                      max_len=max_len, split_file=split_file, force=force)
    run_and_exit(lambda: run_vocab(cfg), json_out=json_out, verbose=verbose)
