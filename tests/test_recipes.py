"""The script entry points in recipes/: launcher-friendly train script and the demo table."""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load_demo():
    spec = importlib.util.spec_from_file_location("demo", ROOT / "recipes" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_script_form_validates_config_like_the_cli():
    out = subprocess.run([sys.executable, str(ROOT / "recipes" / "train.py"), "recipes/quickstart.yaml", "bogus=1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: unknown config key 'bogus' (see `afa-llm train --help` for the keys)"]


def _result(method, predictions, labels, share):
    correct = sum(p == y for p, y in zip(predictions, labels))
    report = {"accuracy": correct / len(labels), "macro_f1": 0.5, "n": len(labels),
              "predictions": predictions, "labels": labels}
    return {"method": method, "model": "m", "data": "d", "split_seed": 0, "seed": 0, "steps": 10,
            "test": report, "zero_shot": dict(report), "fake_focus_share": {"adapter": share, "base": 1.0}}


def test_demo_table_reports_paired_difference_and_verdict():
    demo = _load_demo()
    labels = [0, 1] * 20
    lora = _result("lora", labels[:30] + [1 - y for y in labels[30:]], labels, 0.9)  # 30/40 correct
    afa = _result("afa", list(labels), labels, 0.8)  # 40/40 correct: AFA-only correct on 10
    table = demo.comparison_table(lora, afa)
    assert "AFA - LoRA: +0.2500 accuracy" in table
    assert "AFA-only correct 10, LoRA-only correct 0" in table
    assert "AFA beats plain LoRA" in table  # exact McNemar p = 2/2^10 < 0.05
    same = demo.comparison_table(lora, _result("afa", lora["test"]["predictions"], labels, 0.8))
    assert "does NOT significantly beat" in same


def test_quickstart_trains_plain_lora():
    from afa_llm.config import load_config

    assert load_config(str(ROOT / "recipes" / "quickstart.yaml")).method == "lora"


def test_demo_names_both_methods_whatever_the_recipe_says(tmp_path, monkeypatch):
    demo = _load_demo()
    trained = []
    monkeypatch.setattr(demo, "train", lambda cfg: trained.append((cfg.method, cfg.output_dir)) or {})
    for recipe_method in ("lora", "afa"):
        recipe = tmp_path / f"{recipe_method}.yaml"
        recipe.write_text(f"method: {recipe_method}\nsteps: 3\noutput_dir: {tmp_path / recipe_method}\n")
        for method in ("lora", "afa"):
            demo.run_method(str(recipe), method, [])
    assert trained == [(m, f"{tmp_path / r}-{m}") for r in ("lora", "afa") for m in ("lora", "afa")]
