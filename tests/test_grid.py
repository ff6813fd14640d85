"""experiments/grid.py: cell naming, unknown keys, and the paired report over seeds."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from afa_llm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("grid", ROOT / "experiments" / "grid.py")
grid_mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(grid_mod)


def _write(folder: Path, preds_flip: int, history, zero_shot=False):
    labels = [0, 1] * 10
    preds = [1 - y if i < preds_flip else y for i, y in enumerate(labels)]
    report = {"accuracy": sum(p == y for p, y in zip(preds, labels)) / 20, "macro_f1": 0.5, "n": 20,
              "predictions": preds, "labels": labels}
    result = {"model": "m", "data": "d", "split_seed": 0, "steps": 10, "test": report,
              "validation": history, "fake_focus_share": {"adapter": 0.9, "base": 1.0}}
    if zero_shot:
        result["zero_shot"] = dict(report, accuracy=0.5)
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps(result))


def test_report_pairs_each_seed_with_the_baseline(tmp_path):
    grid = {"recipe": "r.yaml", "output_root": str(tmp_path), "seeds": [0, 1],
            "variants": {"lora": ["method=lora"], "afa": ["method=afa"], "other": ["x=1"]}}
    _write(tmp_path / "lora-seed0", 4, [{"step": 5, "accuracy": 0.7}, {"step": 10, "accuracy": 0.8}], True)
    _write(tmp_path / "lora-seed1", 4, [{"step": 10, "accuracy": 0.8}])
    _write(tmp_path / "afa-seed0", 2, [{"step": 5, "accuracy": 0.85}, {"step": 10, "accuracy": 0.9}])
    _write(tmp_path / "afa-seed1", 6, [{"step": 5, "accuracy": 0.6}, {"step": 10, "accuracy": 0.7}])
    text = grid_mod.report(grid)
    afa_row = next(line for line in text.splitlines() if line.startswith("| afa "))
    assert "| 2 | 0.8000 ± 0.1414 |" in afa_row  # 0.9 and 0.7
    # exact McNemar, 2 discordant per seed; pooled over the seeds the two cancel out
    assert "| mean -0.0000 (pooled p=1.000): +0.1000 (p=0.50), -0.1000 (p=0.50) |" in afa_row
    assert "| 5, not reached |" in afa_row  # seed 0 reaches lora's 0.8 at step 5
    assert "not run (yet)" in next(line for line in text.splitlines() if line.startswith("| other "))
    assert "Zero-shot base: accuracy 0.5000" in text


def test_report_of_a_converged_grid_has_best_and_last(tmp_path):
    grid = {"recipe": "r.yaml", "output_root": str(tmp_path), "seeds": [0],
            "variants": {"lora": ["method=lora"], "afa": ["method=afa"]}}
    # lora's best validation (0.9 at step 10) is not its last (0.8): afa reaches 0.9 at step 20
    _write(tmp_path / "lora-seed0", 4, [{"step": 10, "accuracy": 0.9}, {"step": 20, "accuracy": 0.8}])
    _write(tmp_path / "afa-seed0", 2, [{"step": 10, "accuracy": 0.85}, {"step": 20, "accuracy": 0.9}])
    for name, best, last in (("lora", 10, 20), ("afa", 20, 30)):
        path = tmp_path / f"{name}-seed0" / "results.json"
        result = grid_mod.json.loads(path.read_text())
        result.update(test_last=dict(result["test"], accuracy=0.5, macro_f1=0.4), best_step=best, last_step=last,
                      selected="best")
        path.write_text(grid_mod.json.dumps(result))
    text = grid_mod.report(grid)
    assert "steps to lora's best val acc | fake-focus share | last-checkpoint test acc |" in text
    afa_row = next(line for line in text.splitlines() if line.startswith("| afa "))
    assert afa_row.endswith("| 20 | 0.900 | 0.5000 | 0.4000 | 20/30 |"), afa_row


def test_runs_without_select_best_keep_the_plain_report(tmp_path):
    """Newer runs record test_last even without select_best; an older cell beside them has none."""
    grid = {"recipe": "r.yaml", "output_root": str(tmp_path), "seeds": [0],
            "variants": {"lora": ["method=lora"], "at": ["method=at"]}}
    _write(tmp_path / "lora-seed0", 4, [{"step": 10, "accuracy": 0.8}])
    _write(tmp_path / "at-seed0", 2, [{"step": 10, "accuracy": 0.85}])
    path = tmp_path / "at-seed0" / "results.json"
    result = grid_mod.json.loads(path.read_text())
    result.update(test_last=result["test"], best_step=10, last_step=10, selected="last")
    path.write_text(grid_mod.json.dumps(result))
    text = grid_mod.report(grid)
    assert "last-checkpoint" not in text and "steps to lora's final val acc" in text


def test_cells_and_overrides(tmp_path):
    grid = {"recipe": "r.yaml", "output_root": "runs/g", "seeds": [3], "common": ["steps=5"],
            "variants": {"lora": ["method=lora"], "afa": ["method=afa"]}}
    over = grid_mod.cell_overrides(grid, "afa", 3, "lora")
    assert over[:2] == ["steps=5", "method=afa"]
    assert "seed=3" in over and "output_dir=runs/g/afa-seed3" in over and "resume_from=latest" in over
    assert "evaluate_zero_shot=False" in over
    assert "evaluate_zero_shot=True" in grid_mod.cell_overrides(grid, "lora", 3, "lora")
    grid["variants"]["words"] = ["guard=words", "guard_words_from=runs/g/lora-seed{seed}/audit.json"]
    assert "guard_words_from=runs/g/lora-seed3/audit.json" in grid_mod.cell_overrides(grid, "words", 3, "lora")


def test_unknown_grid_key_is_named(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("recipe: r.yaml\nseedz: [0]\nvariants: {a: []}\n")
    with pytest.raises(UserError, match="unknown grid key 'seedz'"):
        grid_mod.load_grid(str(path))


def test_refresh_results_archives_cells_and_rewrites_only_the_table_blocks(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "experiments"))
    import refresh_results

    runs, archive = tmp_path / "runs", tmp_path / "archive"
    _write(runs / "g" / "lora-seed0", 4, [{"step": 10, "accuracy": 0.8}], True)
    _write(runs / "g" / "afa-seed0", 2, [{"step": 10, "accuracy": 0.9}])
    (runs / "g" / "afa-seed0" / "metrics.jsonl").write_text('{"step": 1}\n')
    (runs / "g" / "half-seed0").mkdir()  # unfinished: no results.json, not archived
    assert refresh_results.archive_runs(runs, archive) == 2
    assert (archive / "g" / "afa-seed0" / "metrics.jsonl").exists() and not (archive / "g" / "half-seed0").exists()

    grid_file = tmp_path / "g.yaml"
    grid_file.write_text("recipe: r.yaml\noutput_root: runs/grid/g\nseeds: [0]\n"
                         "variants: {lora: [method=lora], afa: [method=afa]}\n")
    doc = tmp_path / "RESULTS.md"
    doc.write_text(f"# Results\nprose stays\n<!-- grid: {grid_file} -->\nold table\n<!-- end grid -->\nmore prose\n")
    assert refresh_results.refresh(doc, archive) == 1
    text = doc.read_text()
    assert "old table" not in text and "prose stays" in text and text.endswith("<!-- end grid -->\nmore prose\n")
    assert "| afa | `method=afa` | 1 | 0.9000 |" in text


def test_refresh_results_keeps_the_first_run_of_a_retrained_cell(tmp_path):
    import sys

    sys.path.insert(0, str(ROOT / "experiments"))
    import refresh_results

    runs, archive = tmp_path / "runs", tmp_path / "archive"
    _write(archive / "g" / "lora-seed0", 4, [{"step": 10, "accuracy": 0.8}])
    first = (archive / "g" / "lora-seed0" / "results.json").read_text()
    _write(runs / "g" / "lora-seed0", 3, [{"step": 10, "accuracy": 0.8}])  # retrained: one prediction differs
    for _ in range(2):  # archiving twice files the retrain once
        assert refresh_results.archive_runs(runs, archive) == 1
    assert (archive / "g" / "lora-seed0" / "results.json").read_text() == first
    assert (archive / "g" / "lora-seed0" / "rerun-1" / "results.json").read_text() == \
        (runs / "g" / "lora-seed0" / "results.json").read_text()
    assert not (archive / "g" / "lora-seed0" / "rerun-2").exists()
    (runs / "g" / "lora-seed0" / "results.json").write_text(first)  # identical to the archive: archived in place
    assert refresh_results.archive_target(runs / "g" / "lora-seed0", archive / "g" / "lora-seed0") == \
        archive / "g" / "lora-seed0"


def test_refresh_results_names_a_missing_grid_file_in_one_line(tmp_path, capsys):
    import sys

    sys.path.insert(0, str(ROOT / "experiments"))
    import refresh_results

    doc = tmp_path / "RESULTS.md"
    doc.write_text("<!-- grid: experiments/grids/no_such_grid.yaml -->\n<!-- end grid -->\n")
    assert refresh_results.main(["--no-archive", "--doc", str(doc)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "grid file not found" in err and "no_such_grid.yaml" in err
    assert doc.read_text() == "<!-- grid: experiments/grids/no_such_grid.yaml -->\n<!-- end grid -->\n"  # untouched


@pytest.mark.parametrize("path", sorted((ROOT / "experiments" / "grids").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_cell_of_every_grid_is_a_valid_config(path, monkeypatch):
    # a typo in a grid key would otherwise surface hours into a grid, at the cell that has it
    monkeypatch.chdir(ROOT)
    grid = grid_mod.load_grid(str(path))
    baseline = next(iter(grid["variants"]))
    for variant in grid["variants"]:
        if any(o.startswith("guard_words_from=") for o in grid["variants"][variant]):
            try:  # reads an earlier cell's audit, which exists only once that cell is audited and archived
                grid_mod.cell_config(grid, variant, grid["seeds"][-1], baseline)
            except UserError as e:
                assert "guard_words_from" in str(e)
            continue
        cfg, uses_trl = grid_mod.cell_config(grid, variant, grid["seeds"][-1], baseline)
        assert cfg.seed == grid["seeds"][-1] and cfg.resume_from == "latest"
        assert uses_trl == ("runner=trl" in grid["variants"][variant])


def _finished_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_cell_claim_keeps_a_second_process_out_until_its_owner_dies(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    cell = tmp_path / "lora-seed0"
    assert grid_mod.claim_cell(cell) and grid_mod.claim_cell(cell)  # ours, and ours again
    host, pid, started = (cell / ".grid-claim").read_text().split()
    assert (host, pid) == (socket.gethostname(), str(os.getpid())) and started.isdigit()
    grid_mod.release_cell(cell)
    assert not (cell / ".grid-claim").exists()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (cell / ".grid-claim").write_text(f"{socket.gethostname()} {other.pid}")
        assert not grid_mod.claim_cell(cell)  # a live process trains it (a claim without a start time)
        (cell / ".grid-claim").write_text(f"{socket.gethostname()} {other.pid} {grid_mod._start_time(other.pid)}")
        assert not grid_mod.claim_cell(cell)  # the same, with its start time
        (cell / ".grid-claim").write_text(f"{socket.gethostname()} {other.pid} 1")
        assert grid_mod.claim_cell(cell)  # that pid now belongs to a later process: the owner died
    finally:
        other.kill()
        other.wait()
    (cell / ".grid-claim").write_text(f"{socket.gethostname()} {other.pid}")
    assert grid_mod.claim_cell(cell)  # its process died: taken over
    assert (cell / ".grid-claim").read_text().split()[1] == str(os.getpid())
    (cell / ".grid-claim").write_text(f"another-host {_finished_pid()}")
    assert not grid_mod.claim_cell(cell)  # a pid on another host cannot be checked: left alone


def test_run_grid_trains_the_unclaimed_cells_and_releases_them(tmp_path, monkeypatch):
    import socket
    import subprocess
    import sys

    import afa_llm.training.trainer

    monkeypatch.chdir(ROOT)
    grid = {"recipe": "recipes/quickstart.yaml", "output_root": str(tmp_path), "seeds": [0, 1],
            "common": ["steps=5"], "variants": {"lora": ["method=lora"], "afa": ["method=afa"]}}
    trained = []

    def fake_train(cfg):  # records the cell and finishes it as a real run would
        trained.append(Path(cfg.output_dir).name)
        assert (Path(cfg.output_dir) / ".grid-claim").exists()
        (Path(cfg.output_dir) / "results.json").write_text("{}")

    monkeypatch.setattr(afa_llm.training.trainer, "train", fake_train)
    (tmp_path / "lora-seed1").mkdir()
    (tmp_path / "lora-seed1" / "results.json").write_text("{}")  # finished before
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "afa-seed0").mkdir()
        (tmp_path / "afa-seed0" / ".grid-claim").write_text(f"{socket.gethostname()} {other.pid}")
        grid_mod.run_grid(grid, None, archive=None)
    finally:
        other.kill()
        other.wait()
    assert trained == ["lora-seed0", "afa-seed1"]  # seeds outer; the claimed and the finished cells skipped
    assert not (tmp_path / "lora-seed0" / ".grid-claim").exists()
    assert (tmp_path / "afa-seed0" / ".grid-claim").exists()  # the other process's claim is left alone


def test_a_cell_archived_by_an_earlier_checkout_is_not_trained_again(tmp_path):
    grid = {"output_root": str(tmp_path / "runs" / "g"), "seeds": [0, 1], "variants": {"lora": [], "afa": []}}
    archive = tmp_path / "archive"
    (archive / "g" / "afa-seed0").mkdir(parents=True)
    (archive / "g" / "afa-seed0" / "results.json").write_text("{}")  # finished in a checkout that is gone
    (archive / "g" / "lora-seed1").mkdir(parents=True)  # archived folder without results.json: not finished
    everything = [("lora", 0), ("afa", 0), ("lora", 1), ("afa", 1)]
    assert grid_mod.pending_cells(grid, None, None, archive) == [("lora", 0), ("lora", 1), ("afa", 1)]
    assert grid_mod.pending_cells(grid, None, None, archive=None) == everything  # --ignore-archive
    assert grid_mod.pending_cells(grid, ["afa"], [0], archive) == []


# ---- carrying an unfinished cell across checkouts (experiments/carry.py) -----------------------------------
carry_spec = importlib.util.spec_from_file_location("carry", ROOT / "experiments" / "carry.py")
carry_mod = importlib.util.module_from_spec(carry_spec)
carry_spec.loader.exec_module(carry_mod)


def _fake_cell(cell: Path, steps: list[int], best: bool = True) -> None:
    for step in steps:
        folder = cell / "checkpoints" / f"step-{step:06d}"
        (folder / "adapter").mkdir(parents=True)
        (folder / "trainer_state.pt").write_text(f"state {step}")
        (folder / "adapter" / "adapter_model.safetensors").write_text(f"weights {step}")
    if best:
        (cell / "checkpoints" / "best" / "adapter").mkdir(parents=True)
        (cell / "checkpoints" / "best" / "adapter" / "adapter_model.safetensors").write_text("best weights")
    (cell / "config.yaml").write_text("seed: 0\n")
    (cell / "metrics.jsonl").write_text('{"step": 1}\n')
    (cell / "afa").mkdir()  # the tracker's folder: not part of the resume set
    (cell / "afa" / "events").write_text("x")


def test_carry_saves_the_newest_checkpoint_the_best_adapter_and_the_logs(tmp_path):
    cell, root = tmp_path / "runs" / "g" / "afa-seed0", tmp_path / "carry"
    assert carry_mod.save_carry(cell, root) is None  # nothing to carry yet
    _fake_cell(cell, [25, 50])
    target = carry_mod.save_carry(cell, root)
    assert target == root / "g" / "afa-seed0"
    files = sorted(str(p.relative_to(target)) for p in target.rglob("*") if p.is_file())
    assert files == ["checkpoints/best/adapter/adapter_model.safetensors",
                     "checkpoints/step-000050/adapter/adapter_model.safetensors",
                     "checkpoints/step-000050/trainer_state.pt", "config.yaml", "metrics.jsonl"]
    _fake_cell(tmp_path / "later", [75], best=False)
    shutil.rmtree(cell)
    shutil.copytree(tmp_path / "later", cell)
    carry_mod.save_carry(cell, root)  # a newer save replaces the older copy whole
    assert [p.name for p in (target / "checkpoints").iterdir()] == ["step-000075"]


def test_run_grid_resumes_a_carried_cell_and_drops_the_copy_once_it_finishes(tmp_path, monkeypatch):
    import afa_llm.training.trainer

    monkeypatch.chdir(ROOT)
    runs, root = tmp_path / "runs" / "g", tmp_path / "carry"
    grid = {"recipe": "recipes/quickstart.yaml", "output_root": str(runs), "seeds": [0],
            "common": ["steps=5"], "variants": {"lora": ["method=lora"], "afa": ["method=afa"]}}
    _fake_cell(tmp_path / "gone" / "g" / "afa-seed0", [25, 50])  # a checkout that is gone carried it
    carry_mod.save_carry(tmp_path / "gone" / "g" / "afa-seed0", root)
    seen = {}

    def fake_train(cfg):
        cell = Path(cfg.output_dir)
        seen[cell.name] = sorted(p.name for p in (cell / "checkpoints").iterdir()) if (cell / "checkpoints").exists() else []
        (cell / "results.json").write_text("{}")

    monkeypatch.setattr(afa_llm.training.trainer, "train", fake_train)
    (runs / "lora-seed0" / "checkpoints" / "step-000010").mkdir(parents=True)
    (runs / "lora-seed0" / "checkpoints" / "step-000010" / "trainer_state.pt").write_text("own")
    (root / "g" / "lora-seed0" / "checkpoints" / "step-000005").mkdir(parents=True)
    (root / "g" / "lora-seed0" / "checkpoints" / "step-000005" / "trainer_state.pt").write_text("older")
    grid_mod.run_grid(grid, None, archive=None, carry_root=root)
    assert seen == {"lora-seed0": ["step-000010"],  # its own checkpoint wins over a carried one
                    "afa-seed0": ["best", "step-000050"]}  # restored before training
    assert (runs / "afa-seed0" / "metrics.jsonl").read_text() == '{"step": 1}\n'
    assert not root.exists()  # both finished: their copies are dropped, no empty folders left


def test_run_grid_drops_the_carried_copy_of_a_cell_that_finished_elsewhere(tmp_path, monkeypatch):
    import afa_llm.training.trainer

    monkeypatch.chdir(ROOT)
    runs, root, archive = tmp_path / "runs" / "g", tmp_path / "carry", tmp_path / "archive"
    grid = {"recipe": "recipes/quickstart.yaml", "output_root": str(runs), "seeds": [0, 1],
            "common": ["steps=5"], "variants": {"lora": ["method=lora"]}}
    for seed in (0, 1):  # both carried; seed 0 then finished in a checkout whose runs/ is gone
        _fake_cell(tmp_path / "gone" / "g" / f"lora-seed{seed}", [25])
        carry_mod.save_carry(tmp_path / "gone" / "g" / f"lora-seed{seed}", root)
    (archive / "g" / "lora-seed0").mkdir(parents=True)
    (archive / "g" / "lora-seed0" / "results.json").write_text("{}")
    trained = []
    monkeypatch.setattr(afa_llm.training.trainer, "train", lambda cfg: trained.append(Path(cfg.output_dir).name))
    grid_mod.run_grid(grid, None, seeds=[0], archive=archive, carry_root=root)
    assert trained == [] and not (root / "g" / "lora-seed0").exists()
    assert (root / "g" / "lora-seed1").is_dir()  # not selected (--seeds 0): its copy stays


def test_carry_save_names_a_missing_grid_in_one_line(capsys):
    assert carry_mod.main(["save", "no/such/grid.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: grid file not found") and err.count("\n") == 1


def _with_stress(folder: Path, anti_flip: int, lexicon_share: float) -> None:
    """Add stress views (anti: ``anti_flip`` of 20 wrong) and focus metrics to a written cell."""
    result = json.loads((folder / "results.json").read_text())
    labels = [0, 1] * 10
    view = lambda flip: {"accuracy": 1 - flip / 20, "macro_f1": 0.5, "n": 20, "labels": labels,  # noqa: E731
                         "predictions": [1 - y if i < flip else y for i, y in enumerate(labels)]}
    result["stress"] = {"adapter": {"clean": view(0), "aligned": view(0), "anti": view(anti_flip),
                                    "gap": anti_flip / 20, "cue_focus": {"aligned": 0.2, "anti": 0.3}}}
    result["focus_metrics"] = {"adapter": {"lexicon_share": lexicon_share, "lexicon_lift": 1.5,
                                           "lexicon_auprc": 0.4, "comprehensiveness_gain": 0.1,
                                           "sufficiency_gain": None}}
    (folder / "results.json").write_text(json.dumps(result))


def test_report_adds_the_stress_table_with_each_methods_control(tmp_path):
    grid = {"recipe": "r.yaml", "output_root": str(tmp_path), "seeds": [0],
            "variants": {"lora": [], "drop": [], "afa": []}, "controls": {"afa": "drop"}}
    for name, flip in (("lora", 10), ("drop", 8), ("afa", 2)):
        _write(tmp_path / f"{name}-seed0", 0, [{"step": 10, "accuracy": 0.8}])
        _with_stress(tmp_path / f"{name}-seed0", flip, 0.25)
    text = grid_mod.report(grid)
    afa_row = [line for line in text.splitlines() if line.startswith("| afa ")][-2]  # the stress table's row
    assert "| 0.9000 | 0.1000 | 0.300 |" in afa_row  # anti accuracy, gap (2 of 20 flipped), cue focus
    assert "+0.4000 (p=0.0078)" in afa_row and "+0.3000 (p=0.031) (drop)" in afa_row
    assert afa_row.endswith("| -0.4000 (1 seed, p=0.008) |")  # gap 0.1 vs 0.5; the exact sign-flip p is 2/256
    focus_row = [line for line in text.splitlines() if line.startswith("| afa ")][-1]
    assert focus_row == "| afa | 1 | 0.250 | 1.500 | 0.400 | 0.100 | - | +0.000 (1 seed) | +0.000 (1 seed) |"


def test_focus_table_pairs_the_seeds_with_the_baseline(tmp_path):
    grid = {"recipe": "r.yaml", "output_root": str(tmp_path), "seeds": [0, 1, 2],
            "variants": {"lora": [], "afa": []}}
    for seed, (lora_share, afa_share) in enumerate([(0.14, 0.27), (0.15, 0.28), (0.13, 0.30)]):
        for name, share in (("lora", lora_share), ("afa", afa_share)):
            _write(tmp_path / f"{name}-seed{seed}", seed, [{"step": 10, "accuracy": 0.8}])
            _with_stress(tmp_path / f"{name}-seed{seed}", 2, share)
    focus_row = [line for line in grid_mod.report(grid).splitlines() if line.startswith("| afa ")][-1]
    # differences 0.13, 0.13, 0.17: mean 0.1433, sd 0.0231, t = 10.75 with 2 df -> p = 0.0085
    assert "| +0.143 (3 seeds, p=0.0085) |" in focus_row
    stress_row = [line for line in grid_mod.report(grid).splitlines() if line.startswith("| afa ")][-2]
    assert stress_row.endswith("| +0.0000 (3 seeds, p=1.000) |")  # the same examples flipped


def test_controls_must_name_variants(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("recipe: r.yaml\noutput_root: o\nseeds: [0]\nvariants: {a: [], b: []}\ncontrols: {a: c}\n")
    with pytest.raises(UserError, match="controls"):
        grid_mod.load_grid(str(path))


def test_report_has_per_class_f1_when_heads_differ(tmp_path):
    from afa_llm.evaluation.metrics import f1_by_class

    grid = {"recipe": "r.yaml", "output_root": str(tmp_path), "seeds": [0],
            "variants": {"lora": [], "lora_classifier": ["head=classifier"]}}
    for name, f1_neg, head, flips in (("lora", 0.8, "label_words", 2), ("lora_classifier", 0.7, "classifier", 8)):
        _write(tmp_path / f"{name}-seed0", flips, [{"step": 10, "accuracy": 0.8}])
        result = json.loads((tmp_path / f"{name}-seed0" / "results.json").read_text())
        result["head"] = head
        result["test"]["per_class"] = {"neg": {"f1": f1_neg, "support": 15}, "pos": {"f1": 0.9, "support": 5}}
        (tmp_path / f"{name}-seed0" / "results.json").write_text(json.dumps(result))
    lines = grid_mod.report(grid).splitlines()
    assert "| variant | n | F1 neg (75%) | F1 pos (25%) | Δ macro-F1 vs lora | Δ F1 pos vs lora |" in lines
    row = next(line for line in lines if line.startswith("| lora_classifier | 1 | 0.7000 | 0.9000 |"))
    labels = [0, 1] * 10
    a, b = ([1 - y if i < k else y for i, y in enumerate(labels)] for k in (8, 2))
    f1_a, f1_b = f1_by_class(labels, a, 2), f1_by_class(labels, b, 2)
    assert f"| {f1_a.mean() - f1_b.mean():+.4f} (1 seed, p=" in row and f"| {f1_a[1] - f1_b[1]:+.4f} (1 seed, p=" in row
    assert "| lora | 1 | 0.8000 | 0.9000 | - | - |" in lines


def test_report_has_calibration_when_heads_differ(tmp_path):
    grid = {"recipe": "r.yaml", "output_root": str(tmp_path), "seeds": [0],
            "variants": {"lora": [], "lora_classifier": ["head=classifier"]}}
    labels = [0, 1] * 10
    for name, head, sure in (("lora", "label_words", 0.9), ("lora_classifier", "classifier", 0.6)):
        _write(tmp_path / f"{name}-seed0", 0, [{"step": 10, "accuracy": 0.8}])
        result = json.loads((tmp_path / f"{name}-seed0" / "results.json").read_text())
        result["head"] = head
        result["test"].update(probabilities=[[sure, 1 - sure] if y == 0 else [1 - sure, sure] for y in labels],
                              ece=1 - sure, brier=2 * (1 - sure) ** 2)
        (tmp_path / f"{name}-seed0" / "results.json").write_text(json.dumps(result))
    lines = grid_mod.report(grid).splitlines()
    assert "| variant | n | ECE | Brier | Δ Brier vs lora |" in lines
    assert "| lora | 1 | 0.1000 | 0.0200 | - |" in lines
    # every example's Brier: 2 * 0.4^2 = 0.32 against 0.02, the same on all 20: a sure difference
    assert "| lora_classifier | 1 | 0.4000 | 0.3200 | +0.3000 (1 seed, p<0.001) |" in lines
    same = dict(grid, variants={"lora": [], "lora_b": ["seed=1"]})
    shutil.copytree(tmp_path / "lora-seed0", tmp_path / "lora_b-seed0")
    assert not any(line.startswith("| variant | n | ECE") for line in grid_mod.report(same).splitlines())


def test_report_compares_each_method_with_its_own_control(tmp_path):
    grid = {"recipe": "r.yaml", "output_root": str(tmp_path), "seeds": [0, 1],
            "variants": {"lora": [], "afa": ["method=afa"], "wd": ["masked_ce=random"]}, "controls": {"afa": "wd"}}
    for name, flips in (("lora", 4), ("afa", 2), ("wd", 6)):
        for seed in (0, 1):
            _write(tmp_path / f"{name}-seed{seed}", flips, [{"step": 10, "accuracy": 0.8}])
    lines = grid_mod.report(grid).splitlines()
    assert "| variant | its control | n | Δ acc | Δ macro-F1 |" in lines
    row = next(line for line in lines if line.startswith("| afa | wd | 2 |"))
    # 4 more right of 20 on both seeds: +0.2, each McNemar on 4 discordant pairs (p = 0.125)
    assert "mean +0.2000 (pooled p=" in row and "+0.2000 (p=0.12), +0.2000 (p=0.12)" in row
    assert not any(line.startswith("| variant | its control") for line in
                   grid_mod.report(dict(grid, controls={})).splitlines())


def test_pooled_p_never_prints_a_bare_zero():
    assert grid_mod.pooled_p(2e-7) == "<0.001" and grid_mod.pooled_p(0.0456) == "=0.046"
