"""``fcvc caption``."""

from __future__ import annotations

from pathlib import Path

import click
from click.core import ParameterSource

from fcvc_pipeline.commands.common import common_options, complete_run, run_and_exit
from fcvc_pipeline.naming import tsv_field


@click.command()
@common_options
@click.argument("inputs", nargs=-1, type=str)  # strings: a URL is refused by name, not folded into a path
@click.option("--run", "run_name", default=None, shell_complete=complete_run, help="Trained run under <workdir>/runs (default: fcvc-cf-ia or the only run).")
@click.option("--checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None, help="A checkpoint file instead of a run.")
@click.option("--model", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A captioner file (fcvc export) instead of a work directory's run: works from any directory, "
                   "writes nothing.")
@click.option("--backbone-weights", "backbone_weights", multiple=True, metavar="ROLE=PATH",
              callback=lambda ctx, param, value: _role_paths(value),
              help="Where a feature network's weights file is now (ROLE: inception or clip), when it is not at "
                   "the path recorded at extraction and was not embedded; it must be the same file. Repeatable.")
@click.option("--beam-size", type=int, default=None,
              help="Beam size (default: the one `fcvc train` chose on validation for this run).")
@click.option("--max-len", type=int, default=None, help="Longest caption in words (default: the model's).")
@click.option("--attention", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Write one attention figure (PNG) per video into this directory.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--workers", type=int, default=None, help="Decode processes.")
@click.option("--precision", type=click.Choice(["recorded", "auto", "fp32", "bf16"]), default="recorded",
              show_default=True,
              help="The feature networks' precision: recorded = the one the model's training features were "
                   "computed in (for a model that does not record it: fp32 on CPUs, bf16 on CUDA); the others as fcvc extract's.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Append the captions to this JSON Lines file (one object per video, with its path), 64 videos "
                   "at a time, instead of printing them; videos already in the file are skipped, so a large "
                   "folder interrupted midway goes on where it stopped.")
def caption(workdir: Path, json_out: bool, verbose: bool, inputs: tuple[str, ...], run_name: str | None,
            checkpoint: Path | None, model: Path | None, backbone_weights: tuple[tuple[str, Path], ...],
            beam_size: int | None, max_len: int | None, attention: Path | None, device: str, workers: int | None,
            precision: str, output: Path | None):
    """Caption video files or directories end to end: prints video<TAB>caption per video, in the order given.

    The video id is the file name without its extension; two files with one name in different folders
    are told apart by their parent folders (a/clip, b/clip). In both columns a backslash, tab, newline or
    carriage return is written as \\\\, \\t, \\n or \\r, so each video is exactly one line of two
    columns (--json gives the names unescaped). When --attention figures cannot be written (read-only or
    full directory) the captions are still printed, with a warning, and the exit code is 1.

    \b
    Examples:
      fcvc caption my_video.mp4
      fcvc caption clips/ --json --attention figures/
      fcvc caption my_video.mp4 --model captioner.fcvc
      fcvc caption archive/ --output captions.jsonl   # thousands of videos: rerun to go on after a stop
    """
    from fcvc_pipeline.stages.caption import CaptionConfig, run_caption  # noqa: PLC0415 -- torch loads only when the command runs, so --help stays instant

    given = click.get_current_context().get_parameter_source("workdir") is ParameterSource.COMMANDLINE
    cfg = CaptionConfig(inputs=tuple(i if "://" in i else Path(i) for i in inputs), workdir=workdir if given or model is None else None, run=run_name,
                        checkpoint=checkpoint, model=model, backbone_weights=backbone_weights, beam_size=beam_size,
                        max_len=max_len, attention=attention, device=device, workers=workers, output=output,
                        precision=precision)

    def go():
        result = run_caption(cfg)
        if not json_out:
            for item in result.items:
                click.echo(f"{tsv_field(item['video'])}\t{tsv_field(item['caption'])}")
        return result

    run_and_exit(go, json_out=json_out, verbose=verbose)


def _role_paths(values: tuple[str, ...]) -> tuple[tuple[str, Path], ...]:
    out = []
    for value in values:
        role, sep, path = value.partition("=")
        if not sep or not role or not path:
            raise click.BadParameter(f"expected ROLE=PATH (e.g. inception=weights.pth), got {value!r}",
                                     param_hint="--backbone-weights")
        out.append((role.strip(), Path(path).expanduser()))
    return tuple(out)
