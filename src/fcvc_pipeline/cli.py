"""The ``fcvc`` command line: a registry of subcommands, each loaded only when used.

Every command module lives in :mod:`fcvc_pipeline.commands` and is a thin Click wrapper around a
stage function; importing torch happens there, so ``fcvc --help`` stays instant.
"""

from __future__ import annotations

import click

from fcvc_pipeline import __version__
from fcvc_pipeline.commands.common import LazyGroup

# name -> "module:attribute" of a click.Command
COMMANDS: dict[str, str] = {
    "extract": "fcvc_pipeline.commands.extract:extract",
    "vocab": "fcvc_pipeline.commands.vocab:vocab",
    "train": "fcvc_pipeline.commands.train:train",
    "caption": "fcvc_pipeline.commands.caption:caption",
    "score": "fcvc_pipeline.commands.score:score",
    "export": "fcvc_pipeline.commands.export:export",
    "serve": "fcvc_pipeline.commands.serve:serve",
    "demo": "fcvc_pipeline.commands.demo:demo",
    "info": "fcvc_pipeline.commands.info:info",
    "runs": "fcvc_pipeline.commands.runs:runs",
    "bench": "fcvc_pipeline.commands.bench:bench",
}


@click.group(cls=LazyGroup, registry=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fcvc")
def main():
    """Fully convolutional video captioning (FCVC-CF&IA), end to end.

    Every command takes --workdir (default: $FCVC_WORKDIR, else ./fcvc-work), --json (one JSON document
    on stdout, an error document on failure) and -v. Exit codes: 0 done, 1 some items failed, 2 usage or
    input error, 3 internal error, 130 Ctrl-C (143 SIGTERM where a stage stops cleanly). Shell
    completion: eval "$(_FCVC_COMPLETE=bash_source fcvc)" (zsh_source, fish_source).

    \b
    fcvc extract videos/        frames -> Inception-V3 + C3D features (Zarr)
    fcvc vocab captions.json    captions -> vocabulary + splits
    fcvc train                  train FCVC-CF&IA, an ablation or the LSTM baseline
    fcvc caption video.mp4      caption any video end to end
    fcvc score                  BLEU / METEOR / ROUGE-L / CIDEr on the test split
    fcvc export -o FILE.fcvc    a trained model as one file (Captioner.load)
    fcvc serve --model FILE     a captioning web service and page (needs the [serve] extra)
    fcvc demo                   the whole chain on the bundled sample set
    fcvc info [PATH]            what a feature store, run, checkpoint or .fcvc file holds
    fcvc runs                   the runs of the work directory: status, epochs, CIDEr, size
    """


if __name__ == "__main__":
    main()
