"""Pipeline stages as plain library functions: ``run_extract``, ``run_vocab``, ``run_train``, ``run_caption``,
``run_score``; ``run_demo`` and ``run_ablation`` compose them. Each reads config -> cache check -> engine -> result."""
