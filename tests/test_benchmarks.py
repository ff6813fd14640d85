"""Smoke tests of the benchmark scripts: they still run end to end and print their ratio.

The timings themselves are not asserted (speed is for the benchmarks, not for tests); a tiny
random model and a tiny CSV stand in for SmolLM2 and Rotten Tomatoes.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, f"benchmarks/{script}", *args], cwd=ROOT, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow  # a fresh process that imports the whole stack
def test_step_cost_prints_phases_and_ratio(tiny_model_dir, tiny_csv):
    stdout = _run("step_cost.py", "--steps", "1", "--warmup", "0", "--methods", "lora,afa,vat",
                  f"model={tiny_model_dir}", f"data={tiny_csv}", "batch_size=4")
    assert stdout.startswith(tiny_model_dir)  # the header names the model that ran
    row = lambda name: re.search(rf"^{name}\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", stdout, re.M)  # noqa: E731
    masked, perturbed = row("masked passes"), row("perturbed passes")
    assert masked and perturbed, stdout
    assert float(masked.group(1)) == 0.0 and float(masked.group(2)) > 0.0  # only AFA makes masked passes
    assert float(perturbed.group(2)) == 0.0 and float(perturbed.group(3)) > 0.0  # only VAT perturbs
    for method in ("afa", "vat"):
        ratio = re.search(rf"^{method} / LoRA step time: ([\d.]+)x", stdout, re.M)
        assert ratio and float(ratio.group(1)) > 0, stdout


def test_padded_tokens_counts_each_batch_at_its_longest_row():
    import importlib.util

    spec = importlib.util.spec_from_file_location("predict_vs_pipeline", ROOT / "benchmarks/predict_vs_pipeline.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    lengths = [5, 1, 5, 1, 3]
    # file order, batches of 2: [5, 1] -> 10, [5, 1] -> 10, [3] -> 3
    assert bench.padded_tokens(lengths, 2, sort=False) == 23
    # sorted: [1, 1] -> 2, [3, 5] -> 10, [5] -> 5
    assert bench.padded_tokens(lengths, 2, sort=True) == 17
    assert bench.padded_tokens(lengths, 1, sort=False) == sum(lengths)


@pytest.mark.slow  # a fresh process that imports the whole stack
def test_eval_default_cost_prints_the_ratio_and_checks_the_scores(tiny_model_dir, tiny_csv):
    stdout = _run("eval_default_cost.py", "--n", "6", "--repeats", "1", "--model", tiny_model_dir, "--data", tiny_csv)
    line = re.search(r"^n=6: .*ratio ([\d.]+)x; same predictions and probabilities: (\w+)", stdout, re.M)
    assert line and float(line.group(1)) > 0 and line.group(2) == "yes", stdout
