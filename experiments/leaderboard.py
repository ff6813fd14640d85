#!/usr/bin/env python
"""Build a leaderboard from a YAML file; the same as `afa-llm leaderboard ...`.

    python experiments/leaderboard.py experiments/leaderboard_example.yaml [--output-dir DIR] [--from-results] [--limit N]
"""

import sys

from afa_llm.cli import main

if __name__ == "__main__":
    sys.exit(main(["leaderboard", *sys.argv[1:]]))
