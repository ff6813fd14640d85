"""``afa-llm train RECIPE.yaml [key=value ...]``: validate the recipe, then `afa_llm.training.trainer.train`.

    afa-llm train recipes/quickstart.yaml method=lora steps=200
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 -m afa_llm train RECIPE.yaml
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import textwrap

from afa_llm.config import SHARED_KEYS, load_config
from afa_llm.defaults import FAITHFULNESS_ROWS, FOCUS_METRIC_ROWS
from afa_llm.methods import METHODS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = method_help()
    parser.add_argument("recipe", nargs="?", help="a YAML recipe (e.g. recipes/quickstart.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of recipe keys, e.g. method=lora steps=50")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    from afa_llm.training.trainer import train

    overrides = list(args.overrides)
    recipe = args.recipe
    if recipe and "=" in recipe and not recipe.endswith((".yaml", ".yml")):
        overrides, recipe = [recipe, *overrides], None  # only overrides were given
    cfg = load_config(recipe, overrides)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    train(cfg)
    return 0


def method_help() -> str:
    """The keys every run has, then each method with its own keys and defaults."""
    wrap = lambda text: textwrap.fill(text, 100, initial_indent="  ", subsequent_indent="    ")  # noqa: E731
    lines = ["config keys of every run:", wrap(", ".join(SHARED_KEYS)), "",
             "what the final test evaluation's diagnostics cost:",
             wrap(f"focus_eval_limit={FOCUS_METRIC_ROWS}: the fake-focus share and the lexicon focus metrics of that "
                  "many test rows, read off the test pass itself (no extra forward pass; a few percent of its time)"),
             wrap(f"faithfulness_eval_limit={FAITHFULNESS_ROWS}: comprehensiveness and sufficiency of that many rows, "
                  "opt-in: about 30 extra forward passes per row (64 rows cost about twice a 1,000-row test pass)"),
             "",
             "methods (method=NAME) and their own keys; write them flat for the recipe's method, or under",
             "the method's name (afa: {num_masks: 8}, or afa.num_masks=8 on the command line):"]
    for name, cls in METHODS.items():
        label = " [EXPERIMENTAL]" if cls.experimental else ""
        own = ", ".join(f"{f.name}={_default(f)}" for f in dataclasses.fields(cls.Keys))
        lines += [f"{name}{label}: {cls.summary}", wrap(own or "(no keys of its own)")]
    lines.append("See README.md ('Configuration') for what each key does.")
    return "\n".join(lines)


def _default(f) -> object:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
