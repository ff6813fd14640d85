"""A label-prior control for ACT: does calibrating attention do more than correcting the label bias?

    .venv/bin/afa-llm eval --model gemma3-270m --split validation --output act_results/zs-gemma/validation.json
    .venv/bin/python experiments/act_prior_control.py act_results/zs-gemma/validation.json act_results/zs-gemma/draw*

ACT's search uses N labelled validation sentences. The same sentences can fix a model's preference
for one label word with no attention edit at all. For each folder of experiments/act_rows.sh (its
``act.json`` names the calibration ids; ``test.json`` is the model without ACT) this fits the two
corrections of `afa_llm.evaluation.prior` (`afa-llm eval --prior-from`) on those sentences alone and applies them
to the stored test probabilities:
- prior normalisation: divide each class's probability by its mean over the calibration sentences
  (labels unused; the bias estimate of batch calibration, Zhou et al. 2024, where contextual
  calibration, Zhao et al. 2021, would use content-free inputs);
- fitted offset (two classes): the shift of the log-odds that maximises calibration accuracy.
Each is paired with ACT's searched heads on the same test sentences (exact McNemar p).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from act_report import SEARCHED, read_test  # noqa: E402

from afa_llm.evaluation.metrics import mcnemar_test  # noqa: E402
from afa_llm.evaluation.prior import apply_correction, fit_correction  # noqa: E402


def corrected_predictions(folder: Path, validation: dict) -> tuple[dict[str, np.ndarray | None], np.ndarray]:
    """Test predictions of the model without ACT, uncorrected and with each correction fitted on ACT's calibration ids."""
    act = json.loads((folder / "act.json").read_text())
    test = json.loads((folder / "test.json").read_text())
    ids = act["calibration"]["ids"]
    if act["calibration"]["split"] != validation["split"] or len(validation["labels"]) != act["calibration"]["of"]:
        raise ValueError(f"{folder}: its calibration ids index another split than the validation report's")
    cal_probs, cal_labels = np.asarray(validation["probabilities"])[ids], np.asarray(validation["labels"])[ids]
    probs = np.asarray(test["probabilities"])
    rows = {"no correction": probs.argmax(1), "prior normalisation": None, "fitted offset": None}
    for name, method in (("prior normalisation", "normalize"), ("fitted offset", "offset")):
        if method == "normalize" or probs.shape[1] == 2:  # the offset is defined for two classes only
            rows[name] = apply_correction(probs, fit_correction(cal_probs, cal_labels, method)).argmax(1)
    return rows, np.asarray(test["labels"])


def folder_rows(folder: Path, validation: dict) -> list[str]:
    """Per searched ACT rule: its test accuracy, and its paired difference with each correction."""
    corrections, labels = corrected_predictions(folder, validation)
    lines = []
    for name, rule in SEARCHED.items():
        act_test = read_test(folder, name)
        if act_test is None:
            continue
        act_correct = np.asarray(act_test["predictions"]) == labels
        cells = []
        for preds in corrections.values():
            if preds is None:
                cells.append("-")
                continue
            correct = preds == labels
            p = mcnemar_test(act_correct, correct)["p_value"]
            cells.append(f"{correct.mean():.4f}: ACT {act_correct.mean() - correct.mean():+.4f} (p={p:.2f})")
        lines.append(f"| {folder.name} | {rule} | {act_correct.mean():.4f} | {' | '.join(cells)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("validation", help="`afa-llm eval --split validation --output` of the model without ACT")
    parser.add_argument("folders", nargs="+", help="experiments/act_rows.sh output folders (act.json, test.json, test-act.json)")
    args = parser.parse_args(argv)
    try:
        validation = json.loads(Path(args.validation).read_text())
        lines = ["| folder | ACT rule | ACT test acc | no correction: Δ (p) | prior normalisation: Δ (p) | "
                 "fitted offset: Δ (p) |", "|---|---|---|---|---|---|",
                 *(line for f in args.folders for line in folder_rows(Path(f), validation))]
    except (OSError, KeyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
