"""Pipeline stages as plain library functions: ``run_extract``, ``run_vocab``, ``run_train``, ..."""
