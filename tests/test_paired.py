"""experiments/paired.py: per-seed paired differences between any two archived variants."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("paired", ROOT / "experiments" / "paired.py")
paired = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paired)


def _cell(folder: Path, name: str, preds: list[int], labels: list[int], **test: object) -> None:
    (folder / name).mkdir(parents=True)
    accuracy = sum(p == y for p, y in zip(preds, labels)) / len(labels)
    (folder / name / "results.json").write_text(json.dumps({"test": {"accuracy": accuracy, "predictions": preds,
                                                                     "labels": labels, **test}}))


def test_rows_points_and_mcnemar(tmp_path, capsys):
    labels = [0, 1] * 10
    _cell(tmp_path, "at-seed0", labels, labels)  # 1.0
    _cell(tmp_path, "lora-seed0", [0] * 20, labels)  # 0.5: 10 discordant, all for `at`
    assert paired.main([str(tmp_path), "at", "--against", "lora", "--seeds", "0"]) == 0
    out = capsys.readouterr().out
    assert "| `at` | +50.00 (p 0.002) |" in out
    assert paired.main([str(tmp_path), "at", "--against", "lora", "--seeds", "0", "--last"]) == 2  # no test_last
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'at-seed0' / 'results.json'} has no 'test_last' (a run without select_best)"


def test_several_seeds_lead_with_mean_and_std(tmp_path, capsys):
    labels = [0, 1] * 10
    for seed, wrong in enumerate((0, 2)):  # `at` 1.0 and 0.9 against lora's 0.5: +50 and +40 points
        _cell(tmp_path, f"at-seed{seed}", [1 - y if i < wrong else y for i, y in enumerate(labels)], labels)
        _cell(tmp_path, f"lora-seed{seed}", [0] * 20, labels)
    assert paired.main([str(tmp_path), "at", "--against", "lora", "--seeds", "0", "1"]) == 0
    out = capsys.readouterr().out
    # pooled: 10 examples with d = 1 or 0.5, the rest 0; sign flips reach |mean| only as 2 of 2^10
    # per seed, McNemar: 10 discordant all for `at` (p = 2/1024), then 9 against 1 (p = 2 * 11/1024)
    assert "| `at` | mean +45.00 ± 7.07, pooled [+22.50, +67.50] p 0.003: +50.00 (p 0.002), +40.00 (p 0.021) |" in out


def test_missing_cell_or_other_examples_is_one_line(tmp_path, capsys):
    labels = [0, 1] * 4
    _cell(tmp_path, "a-seed0", labels, labels)
    _cell(tmp_path, "b-seed0", labels, labels[::-1])
    assert paired.main([str(tmp_path), "a", "--against", "c", "--seeds", "0"]) == 2
    assert paired.main([str(tmp_path), "a", "--against", "b", "--seeds", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "does not exist" in err[0] and "different test examples" in err[1]


def test_f1_table_names_the_smallest_class_and_its_difference(tmp_path, capsys):
    labels = [0] * 10 + [1] * 6 + [2] * 4  # class 2 is the smallest
    names = {"neg": {}, "neu": {}, "pos": {}}
    good, bad = list(labels), labels[:16] + [1] * 4  # `a` finds class 2; `b` calls it class 1
    for name, preds in (("a-seed0", good), ("b-seed0", bad)):
        _cell(tmp_path, name, preds, labels)
        path = tmp_path / name / "results.json"
        results = json.loads(path.read_text())
        results["test"]["per_class"] = names
        path.write_text(json.dumps(results))
    assert paired.main([str(tmp_path), "a", "--against", "b", "--seeds", "0", "--f1"]) == 0
    out = capsys.readouterr().out
    # macro-F1: a = 1; b: neg 1, neu 2*6/(6+10)=0.75, pos 0 -> 0.5833; smallest class: pos, 1 - 0
    assert "| `a` | `b` | 1 | +41.67 (p " in out and "pos: +100.00 (p " in out


def test_a_variant_is_not_paired_with_itself(tmp_path, capsys):
    labels = [0, 1] * 10
    _cell(tmp_path, "a-seed0", labels, labels, per_class={"neg": {}, "pos": {}})
    _cell(tmp_path, "b-seed0", [0] * 20, labels, per_class={"neg": {}, "pos": {}})
    assert paired.main([str(tmp_path), "a", "b", "--against", "b", "--seeds", "0", "--f1"]) == 0
    out = capsys.readouterr().out
    assert "| `b` | - |" in out and "| `b` | `b` |" not in out and "| `a` | `b` | 1 |" in out
