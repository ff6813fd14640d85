"""The package's structure, read from its source (ast): no import cycles (imports inside functions
included), the library never imports the command layer or argparse, every module stays short, and
each layer imports only the layers below it (docs/ARCHITECTURE.md). The same for the research scripts."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "afa_llm"
MAX_LINES = 400
# entry points that only dispatch to the command layer (`python -m afa_llm`, and the shims `python -m afa_llm.prior`
# and the deprecated `python -m afa_llm.train`)
ENTRY_POINTS = {"afa_llm.cli", "afa_llm.__main__", "afa_llm.train", "afa_llm.prior"}
# lower imports higher never: a module may import its own layer or a lower one (docs/ARCHITECTURE.md)
LAYERS = [
    ("afa_llm.errors", "afa_llm.io_utils", "afa_llm.provenance", "afa_llm.defaults", "afa_llm.specs",
     "afa_llm.deprecations"),
    ("afa_llm.data", "afa_llm.model"),
    ("afa_llm.attention",),
    ("afa_llm.methods", "afa_llm.act"),
    ("afa_llm.config", "afa_llm.runs"),
    ("afa_llm.evaluation",),
    ("afa_llm.training", "afa_llm.inference", "afa_llm.robustness"),
    ("afa_llm.reports",),
    ("afa_llm.commands", "afa_llm.api"),
    tuple(sorted(ENTRY_POINTS)),
]
# the package itself sits on top: its lazy exports (a module __getattr__) reach the API; as a prefix it
# would put every module in the top layer, so it matches only itself
PACKAGE_ROOT = "afa_llm"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules(root: Path) -> dict[str, Path]:
    return {module_name(p, root): p for p in root.rglob("*.py")}


def imported(path: Path, name: str, known: set[str]) -> set[str]:
    """Every module of ``known`` that ``path`` imports, at any depth of its code (functions too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            subs = [f"{base}.{a.name}" for a in node.names]
            # "from pkg import sub": a dependency on pkg.sub; on pkg itself only for the names it defines
            targets = subs + ([base] if any(sub not in known for sub in subs) else [])
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph(root: Path) -> dict[str, set[str]]:
    mods = modules(root)
    return {name: imported(path, name, set(mods)) for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected group of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def layer_of(name: str) -> int:
    """The layer of the longest matching prefix in LAYERS."""
    if name == PACKAGE_ROOT:
        return len(LAYERS) - 1
    best, level = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, level = len(prefix), i
    if level is None:
        raise AssertionError(f"{name} is in no layer: add it to LAYERS and docs/ARCHITECTURE.md")
    return level


# ---- the checks, as pure functions on a graph (tested below on hand-made graphs too) --------------------
def test_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import g\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    assert cycles(graph(pkg)) == [["pkg.a", "pkg.b"]]


def test_the_package_has_no_import_cycle():
    assert cycles(graph(PACKAGE)) == []


def test_the_research_scripts_have_no_import_cycle():
    scripts = ROOT / "experiments"
    mods = {p.stem: p for p in scripts.glob("*.py")}
    edges = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        edges[name] = {m for m in names if m in mods and m != name}
    assert cycles(edges) == []


def test_the_library_never_imports_commands_or_argparse():
    bad = []
    for name, path in modules(PACKAGE).items():
        if name in ENTRY_POINTS or name.startswith("afa_llm.commands"):
            continue
        deps = imported(path, name, set(modules(PACKAGE)) | {"argparse"})
        bad += [f"{name} -> {d}" for d in deps if d == "argparse" or d.startswith("afa_llm.commands")]
        text = path.read_text()
        if "import argparse" in text or "from argparse" in text:
            bad.append(f"{name} -> argparse")
    assert sorted(set(bad)) == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_stay_short(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_each_layer_imports_only_its_own_layer_or_lower_ones():
    edges = graph(PACKAGE)
    upward = [f"{a} (layer {layer_of(a)}) -> {b} (layer {layer_of(b)})"
              for a, deps in edges.items() for b in deps if layer_of(b) > layer_of(a)]
    assert upward == []


def test_every_concern_folder_says_what_it_is():
    for folder in sorted(p for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
        assert doc, f"{folder.name}/__init__.py needs a one-line docstring"


def test_the_adding_a_method_example_trains(tiny_model_dir, learnable_csv, tmp_path, monkeypatch):
    """docs/ARCHITECTURE.md's example, copied as a newcomer would, registered and trained for two steps."""
    import re

    from test_train import tiny_overrides

    from afa_llm import methods
    from afa_llm.config import load_config
    from afa_llm.training.trainer import train

    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    code = re.search(r"## Adding a method.*?```python\n(.*?)```", text, re.S).group(1)
    assert len(code.strip().splitlines()) <= 25
    namespace: dict = {}
    exec(compile(code, "ARCHITECTURE.md", "exec"), namespace)
    monkeypatch.setitem(methods.METHODS, "confidence_penalty", namespace["ConfidencePenalty"])
    run = tmp_path / "run"
    results = train(load_config(None, tiny_overrides(run, tiny_model_dir, learnable_csv, "method=confidence_penalty",
                                                     "penalty=0.2", "steps=2", "eval_every=0")))
    assert results["method"] == "confidence_penalty"
    assert "entropy" in (run / "metrics.jsonl").read_text()


def test_the_readme_csv_example_runs(tiny_model_dir, tmp_path, monkeypatch):
    """README's "your own CSV" block, line by line, on a tiny model (the train line gets a few more overrides)."""
    import csv
    import re
    import shlex

    from afa_llm.cli import main

    block = re.search(r"Train a classifier on your own CSV.*?```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    lines = block.group(1).replace("\\\n", " ").splitlines()
    commands = [shlex.split(line.split("#")[0]) for line in lines if line.startswith("afa-llm ")]
    assert [c[1] for c in commands] == ["train", "eval", "predict", "merge"]
    assert len(block.group(1).strip().splitlines()) <= 10
    monkeypatch.chdir(tmp_path)
    words = ["bad", "good"]
    with open("reviews.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["review", "verdict"])
        writer.writerows((f"review {i}: a {words[i % 2]} film", words[i % 2]) for i in range(40))
    with open("new.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([["review"], ["a good film"], ["a bad film"]])
    for command in commands:
        argv = [str(ROOT / a) if a.startswith("recipes/") else a for a in command[1:]]
        if argv[0] == "train":
            argv += [f"model={tiny_model_dir}", "quantization=none", "steps=2", "eval_every=0", "batch_size=4",
                     "report_to=none", "progress=false", "faithfulness_eval_limit=0"]
        if argv[0] == "eval":
            argv += ["--no-progress", "--faithfulness-n", "0"]
        assert main(argv) == 0, command
    assert Path("predictions.csv").read_text().splitlines()[0] == "review,predicted_label,prob_bad,prob_good"
    assert "head=classifier" in block.group(1)  # the example trains the head: its merged folder names the classes
    config = json.loads((Path("merged/my-classifier") / "config.json").read_text())
    assert sorted(config["id2label"].values()) == words
