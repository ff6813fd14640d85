"""Compare two training runs: the largest adapter-weight difference and the test predictions.

    python experiments/compare_runs.py RUN_A RUN_B [RUN_A2 RUN_B2 ...]

Used to show that a refactor does not change a method: the same recipe and seed, trained
before and after, must give identical adapters (or within 1e-6) and identical predictions.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import load_file


def compare(a: Path, b: Path) -> tuple[float, bool]:
    wa = load_file(str(a / "adapter" / "adapter_model.safetensors"))
    wb = load_file(str(b / "adapter" / "adapter_model.safetensors"))
    if wa.keys() != wb.keys():
        raise SystemExit(f"error: {a} and {b} hold different adapter tensors")
    diff = max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa)
    pa = json.loads((a / "results.json").read_text())["test"]["predictions"]
    pb = json.loads((b / "results.json").read_text())["test"]["predictions"]
    return diff, pa == pb


def main(argv: list[str]) -> int:
    if len(argv) < 2 or len(argv) % 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    worst = 0.0
    for a, b in zip(argv[::2], argv[1::2]):
        diff, same = compare(Path(a), Path(b))
        worst = max(worst, diff)
        print(f"{a} vs {b}: max |adapter diff| {diff:.3g}, test predictions {'identical' if same else 'DIFFER'}")
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
