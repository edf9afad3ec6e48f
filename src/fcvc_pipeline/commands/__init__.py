"""Click wrappers, one module per command: parse options, call the stage function, map errors."""
