"""The `keras-gptq` command line.

`main` parses and dispatches (`keras_gptq.cli.main.main` is the console
script), `common` holds the shared flags and loaders, and each subcommand
is a module: `quantize`, `evaluate` (`eval`), `inspect_preset`
(`inspect`) and `hf` (`export-hf`, `import-hf`).
"""
