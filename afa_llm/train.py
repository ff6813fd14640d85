"""``python -m afa_llm.train`` (and ``accelerate launch -m afa_llm.train``): the same as ``afa-llm train``."""

import sys

from afa_llm.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
