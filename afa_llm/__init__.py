"""afa-llm: LoRA fine-tuning of decoder LLMs with Adversarial Feedback for Attention."""

import logging

# bitsandbytes tries to fetch a fused CPU 4-bit kernel from the HF hub at import and
# warns when it cannot (always, offline). The fallback path is correct, only slower.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__version__ = "0.1.0"
