"""``fcvc train``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from fcvc_pipeline.commands.common import (
    Choice,
    common_options,
    complete_model_or_all,
    complete_run,
    parse_int_list,
    run_and_exit,
)

# Click parameter -> TrainConfig field, where they differ
PARAM_FIELDS = {"run_name": "run"}
USER_SOURCES = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


@click.command()
@common_options
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Read options from a .toml or .json file (e.g. another run's runs/<run>/config.json); options "
                   "given on the command line override the file's. Keys are the option names (max-steps or "
                   "max_steps) and the library-only settings (warmup_steps, heads, kernel_size, ...).")
@click.option("--model", default="fcvc-cf-ia", show_default=True, shell_complete=complete_model_or_all,
              help="fcvc-cf-ia (alias fcvc-final) | fcvc | fcvc-ta | fcvc-ia | fcvc-all | lstm | all (every model, "
                   "then a score table).")
@click.option("--epochs", type=int, default=30, show_default=True,
              help="Epochs to train (with --resume, a larger value extends a finished or interrupted run).")
@click.option("--max-steps", type=int, default=None,
              help="Stop after this many optimizer steps in all (default: no limit; the schedule then spans "
                   "--epochs). With --resume, a larger value extends the run.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Captions per batch (whole videos are packed).")
@click.option("--lr", type=float, default=5e-4, show_default=True,
              help="Peak learning rate (AdamW; linear warm-up, then cosine decay to 10% of it).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seeds the initialisation, the batch order and dropout.")
@click.option("--patience", type=int, default=10, show_default=True,
              help="Epochs without a better validation CIDEr before stopping (an extension restarts the count).")
@click.option("--checkpoint-every", type=int, default=0, show_default=True, help="Also write last.pt every N steps (0: each epoch).")
@click.option("--d-model", type=int, default=None, help="Width of the model (default: 512).")
@click.option("--layers", type=int, default=None, help="Convolutional layers (default: 4; the lstm model ignores it).")
@click.option("--dropout", type=float, default=None, help="Dropout probability in [0, 1) (default: 0.1).")
@click.option("--conv-mask", type=Choice(["paper", "causal"]), default=None,
              help="The caption convolution's window: paper (kernel centred on t, right half masked: t-2..t for "
                   "k = 5) or causal (ConvS2S: t-4..t). Default: the model's (see docs/models.md).")
@click.option("--ema", "ema_decay", type=float, default=0.99, show_default=True,
              help="Validate, keep and caption with an exponential moving average of the weights (decay per step; 0: off).")
@click.option("--label-smoothing", type=float, default=0.1, show_default=True,
              help="Train against (1 - eps) one-hot + eps uniform (the logged nll stays plain).")
@click.option("--select-beams", default="1,3,5", show_default=True,
              help="Beam sizes tried on the validation split after training; the best becomes the run's decoding "
                   "('' to skip: beam 5).")
@click.option("--precision", type=Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="bf16 autocast for the matrix products (auto: on CUDA only; bf16 also helps CPUs with AMX).")
@click.option("--features", type=Choice(["auto", "memory", "stream"]), default="auto", show_default=True,
              help="Hold every train/val video's features in memory (under torchrun: one shared copy per machine), "
                   "or stream each batch's videos from the store with --loader-workers processes reading ahead; "
                   "auto: memory when they fit --memory-budget. Same numbers either way.")
@click.option("--memory-budget", default=None,
              help="For --features auto: the most memory the features may take, as a size (8GiB, 500MB) or a "
                   "share of the memory available at start (default 50%).")
@click.option("--loader-workers", type=int, default=2, show_default=True,
              help="With streamed features: processes reading batches ahead (0: read in the training process).")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--run", "run_name", default=None, shell_complete=complete_run, help="Run name under <workdir>/runs (default: the model name).")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted run exactly where it stopped; with a larger --epochs or --max-steps "
                   "(nothing else changed), extend a finished or interrupted run from its last.pt.")
@click.option("--tensorboard", is_flag=True,
              help="Also write each epoch's losses, validation CIDEr/BLEU-4, learning rate and seconds as "
                   "TensorBoard scalars under runs/<run>/tb/ (needs pip install 'fcvc-pipeline[tensorboard]').")
@click.option("--skip-damaged", is_flag=True,
              help="Check every video's stored features first and train without (listing) the damaged ones, "
                   "instead of stopping on the first one read.")
@click.option("--scst", is_flag=True,
              help="Self-critical training: a new run (default name <init>-scst) that starts from --init's best.pt "
                   "and optimises the CIDEr-D of sampled captions. With --model all: each model's SCST run after "
                   "its cross-entropy run.")
@click.option("--init", default=None, shell_complete=complete_run,
              help="With --scst: the run to start from (a run name, a run directory or a best.pt); its model, "
                   "vocabulary and features must be this work directory's.")
@click.option("--scst-samples", type=int, default=5, show_default=True, help="Captions sampled per video and step.")
@click.option("--scst-baseline", type=Choice(["mean", "greedy"]), default="mean", show_default=True,
              help="The reward each sample is compared with: the mean of the video's other samples, or the "
                   "reward of its greedy caption.")
@click.option("--scst-lr", type=float, default=2e-5, show_default=True,
              help="Peak learning rate of self-critical training (--lr is the cross-entropy rate).")
@click.option("--scst-xe-weight", type=float, default=0.0, show_default=True,
              help="Also add this much of the cross-entropy loss on the reference captions.")
@click.option("--force", is_flag=True, help="Retrain a run that exists with other settings.")
def train(workdir: Path, json_out: bool, verbose: bool, config_file: Path | None, **options: Any):
    """Train a captioner on <workdir>/features.zarr and <workdir>/vocab.

    \b
    Examples:
      fcvc train --model fcvc-cf-ia --epochs 30
      fcvc train --model all                       # every model of the paper's Table 4 + LSTM, then a score table
      fcvc train --run tiny --max-steps 5          # a short try ...
      fcvc train --run tiny --max-steps 40 --resume   # ... extended to 40 steps from where it ended
      fcvc train --config exp.toml --lr 1e-3       # options from a file; flags override it
      fcvc train --config runs/a/config.json --run b   # repeat run a's settings as run b
      fcvc train --tensorboard                     # then: tensorboard --logdir <workdir>/runs
      fcvc train --scst --init fcvc-cf-ia          # self-critical fine-tuning of that run -> run fcvc-cf-ia-scst
      torchrun --nproc-per-node 2 -m fcvc_pipeline -- train --run big --device cuda

    An extension (--resume with a larger --epochs/--max-steps) continues the optimizer, weight average,
    random state and best epoch of last.pt; the learning rate goes on from its current value, its cosine
    decay stretched to the new end (a finished run stays at its final rate), and early stopping counts its
    patience afresh. config.json lists each extension.

    Under torchrun, put -- after the module name: torchrun checks the options after the module against
    its own, and --run reads to it as an abbreviation of its --run-path.
    """
    # deferred: torch loads only when the command runs, so --help stays instant
    from fcvc_pipeline.stages.ablation import run_ablation  # noqa: PLC0415
    from fcvc_pipeline.stages.train import ALL_MODELS, TrainConfig, run_train, scst_init_model  # noqa: PLC0415
    from fcvc_pipeline.training.config import read_config_file  # noqa: PLC0415

    ctx = click.get_current_context()

    def resolved() -> TrainConfig:
        """The command line over the config file over the defaults."""
        values = {PARAM_FIELDS.get(k, k): v for k, v in {"workdir": workdir, **options}.items()}
        values["select_beams"] = parse_int_list(options["select_beams"], "--select-beams")
        given = {"model"} if ctx.get_parameter_source("model") in USER_SOURCES else set()
        if config_file is not None:
            fields_to_params = {v: k for k, v in PARAM_FIELDS.items()}
            for name, value in read_config_file(config_file).items():
                param = fields_to_params.get(name, name)
                if ctx.get_parameter_source(param) not in USER_SOURCES:
                    values[name] = value
                    given.add(name)
        if values["scst"] and values["init"] and "model" not in given and values["model"] != ALL_MODELS:
            values["model"] = scst_init_model(values["workdir"], values["init"]) or values["model"]
        return TrainConfig(**values)

    def stage():
        cfg = resolved()
        return (run_ablation if cfg.model == ALL_MODELS else run_train)(cfg)

    # under torchrun only rank 0 prints the JSON document
    main_rank = int(os.environ.get("RANK", "0")) == 0
    run_and_exit(stage, json_out=json_out and main_rank, verbose=verbose)
