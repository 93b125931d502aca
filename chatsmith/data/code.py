"""Source code as training data: the running Python's standard library, or any folder of code.

Every file is one document. The held-out split is a fixed set of whole files, chosen by a hash
of each file's path relative to its root, so it does not depend on the order files are listed
in, on the machine, or on which other files exist; every stage (pretraining, `eval --code`)
sees the same split.
"""

from __future__ import annotations

import fnmatch
import hashlib
import sysconfig
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chatsmith.errors import ChatsmithError

PYTHON_STDLIB = "builtin:python-stdlib"
HELD_OUT_EVERY = 20  # one file in 20 (by path hash) is held out
SPLITS = ("train", "val", "all")
# Folders of the standard library that are tests or third-party code shipped alongside it
SKIP_DIRS = frozenset(
    {"site-packages", "dist-packages", "test", "tests", "idle_test", "_vendor", "_bundled"}
)
SKIP_DIRS_ANYWHERE = frozenset({"__pycache__", ".git", ".hg", ".svn", "node_modules"})


@dataclass(frozen=True)
class CodeFile:
    path: str  # relative to the root it was found under, with "/" separators
    text: str


def parse_include(include: str | None) -> list[str]:
    """`"*.py,*.rs"` -> `["*.py", "*.rs"]`."""
    patterns = [p.strip() for p in (include or "").split(",") if p.strip()]
    if not patterns:
        raise ChatsmithError('--include needs at least one file pattern, e.g. --include "*.py"')
    return patterns


def is_code_source(data: str | None, include: str | None) -> bool:
    """Whether a pretraining data spec means code (one document per source file)."""
    return data == PYTHON_STDLIB or include is not None


def held_out(rel_path: str) -> bool:
    digest = hashlib.sha1(rel_path.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % HELD_OUT_EVERY == 0


def _is_binary(raw: bytes) -> bool:
    if b"\0" in raw:
        return True
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _read(paths: list[Path], root: Path, notify: Callable[[str], None]) -> list[CodeFile]:
    files, binary = [], []
    for p in paths:
        try:
            raw = p.read_bytes()
        except OSError as e:
            raise ChatsmithError(f"cannot read {p}: {e.strerror}") from None
        rel = p.relative_to(root).as_posix() if p != root else p.name
        if _is_binary(raw):
            binary.append(rel)
        elif raw.strip():
            files.append(CodeFile(rel, raw.decode("utf-8")))
    if binary and not files:
        raise ChatsmithError(
            f"{root}: every matching file is binary or not UTF-8 ({', '.join(binary[:3])}"
            f"{', ...' if len(binary) > 3 else ''}); point --data at source code"
        )
    if binary:
        notify(
            f"note: skipped {len(binary)} binary or non-UTF-8 file(s): {', '.join(binary[:3])}"
            f"{', ...' if len(binary) > 3 else ''}"
        )
    return files


def _matches(rel: str, patterns: list[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(rel, p) for p in patterns)


def folder_files(
    spec: str | Path, include: str, notify: Callable[[str], None] = lambda _: None
) -> list[CodeFile]:
    """The files under a folder (or the one file) that match `include`, sorted by path."""
    root, patterns = Path(spec), parse_include(include)
    if root.is_file():
        return _read([root], root, notify)
    if not root.is_dir():
        raise ChatsmithError(f"code folder {root} does not exist")
    paths = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and not SKIP_DIRS_ANYWHERE & set(p.relative_to(root).parts[:-1])
        and _matches(p.relative_to(root).as_posix(), patterns)
    )
    if not paths:
        raise ChatsmithError(f"folder {root} holds no files matching --include {include!r}")
    files = _read(paths, root, notify)
    if not files:
        raise ChatsmithError(f"every file in {root} matching {include!r} is empty")
    return files


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[CodeFile]:
    """The `.py` files of the running Python's standard library, tests and vendored code left
    out."""
    root = stdlib_root()
    paths = sorted(
        p
        for p in root.rglob("*.py")
        if not (SKIP_DIRS | SKIP_DIRS_ANYWHERE) & set(p.relative_to(root).parts[:-1])
        and not p.name.startswith("test_")
    )
    files = _read(paths, root, lambda _: None) if paths else []
    if not files:
        raise ChatsmithError(f"found no standard-library sources under {root}")
    return files


def split_files(files: list[CodeFile], split: str) -> list[CodeFile]:
    if split not in SPLITS:
        raise ChatsmithError(f"unknown split {split!r} (use {', '.join(SPLITS)})")
    if split == "all":
        return files
    return [f for f in files if held_out(f.path) == (split == "val")]


def code_files(
    data: str, include: str | None, split: str, notify: Callable[[str], None] = lambda _: None
) -> list[CodeFile]:
    """One split of a code source. A folder whose files all land on one side of the split
    trains on all of them and has an empty held-out split (the caller then holds out the tail
    of the training tokens)."""
    if data.startswith("builtin:") and data != PYTHON_STDLIB:
        raise ChatsmithError(f"--include reads a folder of code; {data} is not one (give --data)")
    if data == PYTHON_STDLIB:
        files = stdlib_files()
    else:
        files = folder_files(data, include or "*.py", notify)
    held = [held_out(f.path) for f in files]
    if split != "all" and (all(held) or not any(held)):
        return files if split == "train" else []
    return split_files(files, split)
