"""``fcvc extract``: the Click wrapper around :func:`fcvc_pipeline.stages.extract.run_extract`."""

from __future__ import annotations

from pathlib import Path

import click

from fcvc_pipeline.commands.common import Choice, common_options, run_and_exit


@click.command()
@common_options
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--frames", type=int, default=15, show_default=True, help="Frames sampled uniformly per video.")
@click.option("--frame-size", type=int, default=299, show_default=True,
              help="Frames are resized to SxS for Inception-V3 (299 gives the 8x8 region grid; minimum 75).")
@click.option("--inception-weights", default="imagenet", show_default=True,
              help="imagenet (torchvision, downloaded once) | random[:SEED] (offline; BatchNorm re-estimated "
                   "on the first frames) | PATH (a state dict in torchvision's layout).")
@click.option("--c3d-weights", default="auto", show_default=True,
              help="Clip-model weights: PATH | random[:SEED] (offline tests) | none (no clip features) | hub "
                   "(pytorchvideo models). auto: $FCVC_C3D_WEIGHTS or ~/.cache/fcvc/c3d.pickle for C3D (the "
                   "Sports-1M c3d.pickle of DavideA/c3d-pytorch, which you download yourself), hub otherwise.")
@click.option("--clip-model", default="c3d", show_default=True,
              type=Choice(["c3d", "x3d_m", "slow_r50", "r2plus1d_r50"]),
              help="C3D (Sports-1M, fc6) or a pytorchvideo hub backbone.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda | cuda:N")
@click.option("--precision", type=Choice(["auto", "fp32", "bf16"]), default="auto", show_default=True,
              help="The networks' arithmetic: bf16 (bfloat16 autocast; on CPUs with bf16 units about 1.4x faster "
                   "than fp32 end to end) or fp32. auto: the precision of the store's videos when it has some, "
                   "else bf16 on CUDA and on CPUs with AMX or AVX512-BF16 (FCVC_CPU_BF16=0 turns that off) and fp32 "
                   "elsewhere. Each video records its precision; a store may mix them (fcvc info shows it).")
@click.option("--batch-size", type=int, default=None,
              help="Frames per Inception forward (clips per clip forward: a quarter). Default: whole videos, "
                   "about 16 frames on CPU and 128 on CUDA.")
@click.option("--workers", type=int, default=None, help="Decode worker processes. Default: by CPU count.")
@click.option("--shard", default=None, metavar="I/N",
              help="Extract every N-th video starting at I. Default: torchrun's RANK/WORLD_SIZE, else all.")
@click.option("--store", type=click.Path(path_type=Path), default=None,
              help="Feature store path. Default: <workdir>/features.zarr.")
@click.option("--dtype", type=Choice(["float16", "float32"]), default="float16", show_default=True,
              help="How features are stored (float32 doubles the store; try it when float16 overflows).")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds allowed to decode one video.")
@click.option("--decoder", type=Choice(["auto", "decord", "pyav"]), default="auto", show_default=True,
              help="auto: decord, falling back to PyAV for files decord cannot read.")
@click.option("--calibration-frames", type=int, default=64, show_default=True,
              help="Frames used to re-estimate BatchNorm statistics of random weights.")
@click.option("--verify", is_flag=True,
              help="Read every complete video of INPUTS in full (checksums) first, and extract the damaged "
                   "ones again. Default: off (only missing or cut chunk files are noticed).")
@click.option("--force", is_flag=True,
              help="Delete a store made with other settings and rebuild it. Default: off (such a store is refused).")
def extract(workdir, json_out, verbose, inputs, frames, frame_size, inception_weights, c3d_weights, clip_model, device,
            precision, batch_size, workers, shard, store, dtype, timeout, decoder, calibration_frames, verify, force):
    """Extract Inception-V3 frame/region features and clip features from videos.

    INPUTS are video files, folders (searched recursively) or .txt files listing paths. The video id is
    the file stem. Reruns extract only new, changed, failed or interrupted videos. Progress goes to
    stderr: a bar on a terminal, a line every 30 s in a log (FCVC_PROGRESS=0 silences it).

    \b
    Examples:
      fcvc extract videos/ --c3d-weights c3d.pickle       # Inception-V3 (ImageNet) + C3D (Sports-1M)
      fcvc extract videos/ --c3d-weights none             # frame and region features only
      fcvc extract videos/ --inception-weights random --c3d-weights random   # offline test run
      fcvc extract list.txt --shard 0/2 & fcvc extract list.txt --shard 1/2   # two writers, one store
      nohup fcvc extract videos/ --json >result.json 2>extract.log &
    """

    def run():
        from fcvc_pipeline.stages.extract import ExtractConfig, run_extract  # noqa: PLC0415 -- torch loads only when the command runs, so --help stays instant

        cfg = ExtractConfig(inputs=tuple(inputs), workdir=workdir, store=store, frames=frames, frame_size=frame_size,
                            inception_weights=inception_weights, c3d_weights=c3d_weights, clip_model=clip_model,
                            device=device, batch_size=batch_size, workers=workers, shard=shard, force=force,
                            dtype=dtype, timeout=timeout, decoder=decoder, calibration_frames=calibration_frames, verify=verify,
                            precision=precision)
        return run_extract(cfg)

    run_and_exit(run, json_out=json_out, verbose=verbose)
