"""Writing outputs safely: check the destination before any work, then write atomically.

Every command that writes checks its destinations first (`check_writable_file`,
`check_writable_dir`), before loading any model, so an unwritable path costs one line
on stderr and exit 2 instead of a traceback after the work is done. Writes go to a
temporary file beside the target and are renamed into place (`atomic_path`), so an
interrupted run never leaves a half-written file where a good one was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

from afa_llm.errors import UserError


# ---- checks before work -----------------------------------------------------------------
def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (what a later mkdir -p would build on)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _cannot_create_in(folder: Path) -> str | None:
    """Why no file can be created in ``folder``, or None if one can.

    A real probe file, not `os.access`: root passes every permission check, and
    pseudo file systems (/proc) refuse new files whatever the mode bits say.
    """
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    try:
        fd, name = tempfile.mkstemp(dir=folder, prefix=".afa-llm-write-check-")
    except OSError as exc:
        return f"cannot create a file in {folder} ({exc.strerror or exc})"
    os.close(fd)
    os.unlink(name)
    return None


def check_writable_file(path: str | Path, flag: str) -> Path:
    """Raise a one-line `UserError` naming ``flag`` unless a file can be written at ``path``."""
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{flag} {path} is a folder; give a file name")
    reason = _cannot_create_in(_nearest_existing(target.parent))
    if reason:
        raise UserError(f"{flag} {path} is not writable: {reason}")
    return target


def check_writable_dir(path: str | Path, key: str) -> Path:
    """Raise a one-line `UserError` naming ``key`` unless files can be written in folder ``path``."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UserError(f"{key} {path} is a file, not a folder")
    reason = _cannot_create_in(_nearest_existing(target))
    if reason:
        raise UserError(f"{key} {path} is not writable: {reason}")
    return target


# ---- atomic writes ------------------------------------------------------------------------
def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _default_file_mode() -> int:
    """What ``open(..., "w")`` would give a new file (mkstemp makes it owner-only)."""
    return 0o666 & ~_umask()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    The temporary name keeps the suffix, so writers that pick a format from it
    (matplotlib's ``savefig``) still work. On any error the temporary file is removed
    and ``path`` keeps its old content; an `OSError` becomes a one-line `UserError`.
    """
    target = Path(path)
    tmp: Path | None = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.tmp-", suffix=target.suffix)
        os.close(fd)
        tmp = Path(name)
        yield tmp
        tmp.chmod(_default_file_mode())
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        raise UserError(f"cannot write {target}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it replaces ``path``.

    A file, a link or an empty folder at ``path`` is removed; a full folder is first moved
    aside, so ``path`` is at every moment either the old folder or the complete new one. On
    any error the temporary folder is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    try:
        tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the result is an ordinary folder
        yield tmp
        old = None
        if target.is_symlink() or target.is_file():
            target.unlink()
        elif target.is_dir():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
            os.replace(target, old / "x")
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def atomic_writer(path: str | Path, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """``open(path, mode)`` that only replaces ``path`` once the block finishes without error."""
    with atomic_path(path) as tmp, open(tmp, mode, **open_kwargs) as handle:
        yield handle


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_writer(path, encoding="utf-8") as handle:
        handle.write(text)


def write_json(path: str | Path, payload: dict, indent: int | None = 2) -> None:
    """Write JSON atomically (temp file + rename), so no half-written result remains."""
    atomic_write_text(path, json.dumps(payload, indent=indent))
