"""The docs that ship with the code: every reference in them resolves, inside this repository.

What is checked, over the repository's Python, Markdown, YAML, TOML, shell files and the Makefile
(not .venv, not runs/):

- every ``docs/*.md`` file named anywhere exists;
- nothing points outside the repository (a sibling checkout's design notes, an absolute path of
  the development machine);
- every dotted ``afa_llm.`` name in a doc, a docstring or a comment imports, or is an attribute of
  what imports (a dataclass field or an attribute set in ``__init__`` counts); the archived run
  outputs under docs/results_data are left out of this one: they record what the code wrote then;
- every short name in backticks that starts with one of the package's subpackages (a method's
  docstring citing a module path relative to the package) resolves the same way under ``afa_llm``;
- every ``tests/FILE.py::TEST`` that a doc names is a test in that file.

Importing modules is all it does; no model loads. Each checker is unit-tested on a made-up bad
reference below, so each test can fail.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.util
import inspect
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {".git", ".venv", ".venv-bench", ".pytest_cache", "__pycache__", "runs", ".cache", "results", "focus",
             "merged", "act_results", "logs", "out"}
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".sh"}
ARCHIVE = ROOT / "docs" / "results_data"
SUBPACKAGES = sorted(p.name for p in (ROOT / "afa_llm").iterdir() if (p / "__init__.py").is_file())

DOC_PATH = re.compile(r"(?<![\w/.-])docs/[\w./-]*?\.md\b")
OUTSIDE = re.compile(r"\.\./shared\b|shared/desig[n]/|/wor[k]/(?:shared|main)\b")
FULL_NAME = re.compile(r"(?<![\w/.-])afa_llm(?:\.[A-Za-z_]\w*)+(?![\w-])")
SHORT_NAME = re.compile(r"`{1,2}((?:" + "|".join(SUBPACKAGES) + r")(?:\.[A-Za-z_]\w*)+)(?:\(\))?`{1,2}")
TEST_REF = re.compile(r"\btests/(test_\w+\.py)::(\w+)")
FILE_SUFFIXES = {"json", "jsonl", "csv", "yaml", "yml", "md", "py", "parquet", "txt", "gguf", "png", "html"}


# ---- the checkers --------------------------------------------------------------------------------
def repo_files(root: Path = ROOT) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        parts = path.relative_to(root).parts
        if any(p in SKIP_DIRS or p.endswith(".egg-info") for p in parts[:-1]):
            continue
        if path.is_file() and (path.suffix in SUFFIXES or path.name == "Makefile"):
            found.append(path)
    return sorted(found)


def prose(path: Path, text: str | None = None) -> list[tuple[int, str]]:
    """(line, text) of what a reader reads: a Python file's docstrings and comments, any other file whole."""
    text = path.read_text() if text is None else text
    if path.suffix != ".py":
        return [(1, text)]
    parts = [(tok.start[0], tok.string) for tok in tokenize.generate_tokens(io.StringIO(text).readline)
             if tok.type == tokenize.COMMENT]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body[0] if node.body else None
            if (isinstance(body, ast.Expr) and isinstance(body.value, ast.Constant)
                    and isinstance(body.value.value, str)):
                parts.append((body.lineno, body.value.value))
    return sorted(parts)


def _line(text: str, start: int, offset: int) -> int:
    return start + text.count("\n", 0, offset)


def _has_attribute(cls: type, name: str) -> bool:
    """A class attribute, a (dataclass) annotation anywhere in the MRO, or ``self.name`` set in its source."""
    if hasattr(cls, name) or any(name in getattr(k, "__annotations__", {}) for k in cls.__mro__):
        return True
    if dataclasses.is_dataclass(cls) and name in {f.name for f in dataclasses.fields(cls)}:
        return True
    assigned = re.compile(rf"\bself\.{name}\b[\w\s,.]*(?::[^=\n]*)?=(?!=)")
    for klass in cls.__mro__:
        try:
            if assigned.search(inspect.getsource(klass)):
                return True
        except (OSError, TypeError):
            continue
    return False


def resolve(dotted: str) -> str | None:
    """None when ``dotted`` is a module or an attribute of one; else why it does not resolve."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            found = importlib.util.find_spec(module_name) is not None
        except (ImportError, AttributeError, ValueError):
            found = False
        if not found:
            continue
        obj = importlib.import_module(module_name)
        for attr in parts[cut:]:
            if hasattr(obj, attr):
                obj = getattr(obj, attr)
            elif inspect.isclass(obj) and _has_attribute(obj, attr):
                return None  # an instance attribute: nothing further to look into
            else:
                return f"{getattr(obj, '__name__', obj)!s} has no {attr!r}"
        return None
    return "no such module"


def named_docs(path: Path, text: str | None = None) -> list[tuple[int, str]]:
    text = path.read_text() if text is None else text
    return [(_line(text, 1, m.start()), m.group(0)) for m in DOC_PATH.finditer(text)]


def outside_references(path: Path, text: str | None = None) -> list[tuple[int, str]]:
    text = path.read_text() if text is None else text
    return [(_line(text, 1, m.start()), m.group(0)) for m in OUTSIDE.finditer(text)]


def dotted_names(path: Path, text: str | None = None) -> list[tuple[int, str]]:
    """``afa_llm.`` names, and short subpackage names in backticks made absolute, in the prose of ``path``."""
    names = []
    for start, chunk in prose(path, text):
        names += [(_line(chunk, start, m.start()), m.group(0)) for m in FULL_NAME.finditer(chunk)]
        for m in SHORT_NAME.finditer(chunk):
            if m.group(1).rsplit(".", 1)[-1] not in FILE_SUFFIXES:
                names.append((_line(chunk, start, m.start()), "afa_llm." + m.group(1)))
    return names


def broken_test_references(path: Path, text: str | None = None) -> list[tuple[int, str, str]]:
    """``tests/FILE.py::TEST`` references in ``path`` whose file or test does not exist: (line, ref, why)."""
    text = path.read_text() if text is None else text
    bad = []
    for m in TEST_REF.finditer(text):
        file = ROOT / "tests" / m.group(1)
        if not file.is_file():
            bad.append((_line(text, 1, m.start()), m.group(0), "no such file"))
            continue
        defined = {node.name for node in ast.walk(ast.parse(file.read_text()))
                   if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        if m.group(2) not in defined:
            bad.append((_line(text, 1, m.start()), m.group(0), "no such test"))
    return bad


def _where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


# ---- the repository ---------------------------------------------------------------------------------
def test_every_named_doc_exists():
    missing = [f"{_where(p, line)}: {doc}" for p in repo_files() for line, doc in named_docs(p)
               if not (ROOT / doc).is_file()]
    assert not missing, "docs named but missing:\n" + "\n".join(missing)


def test_no_reference_leaves_the_repo():
    outside = [f"{_where(p, line)}: {ref}" for p in repo_files() for line, ref in outside_references(p)]
    assert not outside, "references outside the repository:\n" + "\n".join(outside)


def test_every_dotted_afa_llm_name_resolves():
    cache: dict[str, str | None] = {}
    stale = []
    for path in repo_files():
        if ARCHIVE in path.parents:
            continue
        for line, name in dotted_names(path):
            why = cache[name] if name in cache else cache.setdefault(name, resolve(name))
            if why:
                stale.append(f"{_where(path, line)}: {name}: {why}")
    assert not stale, "names that do not resolve:\n" + "\n".join(stale)


def test_every_named_test_exists():
    bad = [f"{_where(p, line)}: {ref}: {why}" for p in repo_files() for line, ref, why in broken_test_references(p)]
    assert not bad, "tests named but missing:\n" + "\n".join(bad)


# ---- the checkers catch what they should ---------------------------------------------------------------
def test_resolve_accepts_modules_attributes_and_fields():
    assert resolve("afa_llm.evaluation.metrics") is None
    assert resolve("afa_llm.evaluation.metrics.paired_t_test") is None
    assert resolve("afa_llm.runs.RunInfo.adapter_dir") is None  # a dataclass field without a default
    assert resolve("afa_llm.methods.afa.AFAMethod.disc") is None  # set in __init__


@pytest.mark.parametrize("name", ["afa_llm.methods.masking", "afa_llm.runs.RunInfo.settings",
                                  "afa_llm.evaluation.metrics.no_such_test", "afa_llm.no_such_module"])
def test_resolve_rejects_made_up_names(name):
    assert resolve(name)


def test_only_prose_is_read_in_python():
    source = ('"""See `methods.masking` and afa_llm.no_such."""\n'
              'x = "afa_llm.not_prose"  # afa_llm.in_a_comment\n'
              'def f():\n    """Uses ``attention.masking.hide_tokens`` and `config.json`."""\n')
    names = [name for _, name in dotted_names(Path("example.py"), source)]
    assert names == ["afa_llm.no_such", "afa_llm.methods.masking", "afa_llm.in_a_comment",
                     "afa_llm.attention.masking.hide_tokens"]


def test_named_docs_and_outside_references_are_found():
    doc = "docs/" + "NO_SUCH_DOC.md"
    text = f"see {doc} and docs/AFA.md,\nnot ../" + "shared/" + "design/AFA.md"
    assert [d for _, d in named_docs(Path("x.md"), text)] == [doc, "docs/AFA.md"]
    assert [line for line, _ in outside_references(Path("x.md"), text)] == [2]


def test_test_references_must_name_a_real_test():
    text = ("tests/test_docs.py::test_every_named_doc_exists, tests/test_docs.py::" + "test_nothing_here, "
            "tests/" + "test_no_such_file.py::test_x")
    assert [why for _, _, why in broken_test_references(Path("x.md"), text)] == ["no such test", "no such file"]
