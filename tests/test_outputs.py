"""Outputs are checked before any work and written atomically (`afa_llm.io_utils`).

Every command that writes refuses an unwritable destination with one line on stderr and
exit 2, before any model loads. Tests run as root, for whom chmod does not block writes,
so the unwritable places are a path under a regular file and a path under /proc.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from afa_llm import cli
from afa_llm.errors import UserError
from afa_llm.io_utils import (atomic_path, atomic_write_text, atomic_writer, check_writable_dir,
                              check_writable_file, write_json)

BLOCKED = ("under-a-file", "under-proc")


def blocked_path(kind: str, tmp_path: Path, name: str) -> str:
    if kind == "under-a-file":
        (tmp_path / "a-file").write_text("not a folder")
        return str(tmp_path / "a-file" / "sub" / name)
    return f"/proc/afa-llm-test/{name}"


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if any command gets as far as loading weights or a tokenizer."""
    fail = lambda *a, **k: pytest.fail("a model was loaded before the output was checked")  # noqa: E731
    for name in ("load_model", "load_model_tokenizer", "load_tokenizer"):
        monkeypatch.setattr(f"afa_llm.model.loading.{name}", fail)


def command_line(command: str, target: str, tmp_path: Path, tiny_csv: str) -> list[str]:
    if command == "leaderboard":
        config = tmp_path / "board.yaml"
        config.write_text(f"output_dir: {target}\nentries:\n  - name: x\n    model: tiny\n    data: {tiny_csv}\n")
        return ["leaderboard", str(config)]
    return {
        "eval --output": ["eval", "--data", tiny_csv, "--output", target],
        "eval --reliability-plot": ["eval", "--data", tiny_csv, "--reliability-plot", target],
        "predict --output": ["predict", "--model", "tiny", "--data", tiny_csv, "--output", target],
        "merge --output": ["merge", "--adapter", str(tmp_path / "no-run"), "--output", target],
        "focus --output": ["focus", "--text", "a fine film", "--output", target],
        "train output_dir": ["train", f"output_dir={target}", "steps=1"],
    }[command]


TARGET_NAMES = {"eval --output": "report.json", "eval --reliability-plot": "plot.png", "predict --output": "p.csv",
                "merge --output": "merged", "focus --output": "focus", "train output_dir": "run",
                "leaderboard": "board"}


@pytest.mark.parametrize("kind", BLOCKED)
@pytest.mark.parametrize("command", list(TARGET_NAMES))
def test_unwritable_output_fails_first(capsys, no_model, tmp_path, tiny_csv, command, kind):
    target = blocked_path(kind, tmp_path, TARGET_NAMES[command])
    code = cli.main(command_line(command, target, tmp_path, tiny_csv))
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert "is not writable" in err, err
    assert out == ""


def test_checks_accept_writable_places_and_create_nothing(tmp_path):
    assert check_writable_file(tmp_path / "new" / "deeper" / "x.json", "--output") == tmp_path / "new" / "deeper" / "x.json"
    assert check_writable_dir(tmp_path / "run", "output_dir") == tmp_path / "run"
    (tmp_path / "existing.json").write_text("{}")
    check_writable_file(tmp_path / "existing.json", "--output")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.json"]  # no probe file, no folder left


def test_checks_reject_the_wrong_kind(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="is a folder; give a file name"):
        check_writable_file(tmp_path, "--output")
    with pytest.raises(UserError, match="output_dir .* is a file, not a folder"):
        check_writable_dir(tmp_path / "f", "output_dir")


def test_atomic_writes_replace_or_keep(tmp_path):
    target = tmp_path / "out" / "result.txt"
    atomic_write_text(target, "first")
    assert target.read_text() == "first"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # like open(), not mkstemp's 0600
    with pytest.raises(RuntimeError), atomic_writer(target) as handle:
        handle.write("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["result.txt"]
    with atomic_path(tmp_path / "plot.png") as tmp:
        assert tmp.suffix == ".png" and tmp.parent == tmp_path  # formats picked by suffix still work
        tmp.write_bytes(b"png")
    assert (tmp_path / "plot.png").read_bytes() == b"png"
    write_json(tmp_path / "r.json", {"a": 1})
    assert (tmp_path / "r.json").read_text() == '{\n  "a": 1\n}'


def test_write_failure_is_one_line(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(UserError, match="cannot write"):
        atomic_write_text(tmp_path / "f" / "x.txt", "text")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_dir_swaps_a_full_folder_and_keeps_it_on_error(tmp_path):
    from afa_llm.io_utils import atomic_dir

    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "new.txt").write_text("half")
            raise RuntimeError("killed mid-write")
    assert [p.name for p in target.iterdir()] == ["old.txt"]
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary or old folder left
    (tmp_path / "file").write_text("x")
    with atomic_dir(tmp_path / "file") as tmp:
        (tmp / "a").write_text("a")
    assert (tmp_path / "file" / "a").read_text() == "a"
