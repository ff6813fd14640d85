"""``python -m afa_llm COMMAND ...`` is ``afa-llm COMMAND ...``, for launchers that run a module:

    ACCELERATE_USE_CPU=1 accelerate launch --config_file accelerate_configs/cpu_2proc.yaml -m afa_llm train RECIPE.yaml
    torchrun --nproc_per_node 2 -m afa_llm train RECIPE.yaml
"""

import sys

from afa_llm.cli import main

if __name__ == "__main__":
    sys.exit(main())
