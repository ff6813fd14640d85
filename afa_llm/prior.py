"""``python -m afa_llm.prior FIT.json REPORT.json``: correct a stored report without the model
(`afa_llm.commands.prior`)."""

import sys

from afa_llm.commands.prior import main

if __name__ == "__main__":
    sys.exit(main())
