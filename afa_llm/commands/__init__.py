"""The command layer: one module per ``afa-llm`` subcommand, each its options (argparse), then a call into
the library. Only this folder and `afa_llm.cli` import argparse."""
