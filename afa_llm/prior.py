"""``python -m afa_llm.prior FIT.json REPORT.json``: correct a stored report without the model
(`afa_llm.evaluation.prior.main`)."""

import sys

from afa_llm.evaluation.prior import main

if __name__ == "__main__":
    sys.exit(main())
