"""``python -m fcvc_pipeline`` runs the ``fcvc`` command line (this is also what torchrun launches)."""

from fcvc_pipeline.cli import main

if __name__ == "__main__":
    main()
