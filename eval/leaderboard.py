#!/usr/bin/env python
"""Build a leaderboard from a YAML file; the same as `afa-llm leaderboard ...`.

    python eval/leaderboard.py eval/leaderboard_example.yaml [--output-dir DIR] [--from-results] [--limit N]
"""

import sys

from afa_llm.evaluation.leaderboard import main

if __name__ == "__main__":
    sys.exit(main())
