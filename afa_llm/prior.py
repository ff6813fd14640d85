"""``python -m afa_llm.prior FIT.json REPORT.json``: a shim for ``afa-llm prior`` (`afa_llm.commands.prior`),
the same parser and the same one-line errors."""

import sys

from afa_llm.cli import main

if __name__ == "__main__":
    sys.exit(main(["prior", *sys.argv[1:]]))
