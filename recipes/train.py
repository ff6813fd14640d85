"""Script form of ``afa-llm train`` (a shim: the same function, `afa_llm.cli.main`), for launchers that want a file:

    python recipes/train.py recipes/quickstart.yaml method=lora
    ACCELERATE_USE_CPU=1 accelerate launch --config_file accelerate_configs/cpu_2proc.yaml \
        recipes/train.py recipes/quickstart.yaml
    accelerate launch --config_file accelerate_configs/gpu_ddp.yaml recipes/train.py recipes/gpu_qlora_qwen.yaml

``python -m afa_llm train ...`` does the same for launchers that take a module (``accelerate launch -m``). The loop
itself lives in afa_llm/training/trainer.py (read that file for the features).
"""

import sys

from afa_llm.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
