"""fcvc: fully convolutional video captioning with coarse-to-fine and inherited attention.

Each pipeline stage is a plain function (``run_extract``, ``run_vocab``, ``run_train``, ...) in
:mod:`fcvc_pipeline.stages`; the ``fcvc`` command line is a thin layer over them.
"""

__version__ = "0.1.0"
