"""The identity of a model directory: one sha256 over a manifest of its files' sha256.

The manifest is the text `<sha256>  <relative/posix/path>\n` per regular file, sorted by path. It
lists the same files, names and digests that a signed report attests as its subjects (regular files,
symlinked directories not followed), and it is `sha256sum`'s output format, so that
`(cd DIR && find . -type f -printf '%P\n' | LC_ALL=C sort | xargs -d '\n' sha256sum) | sha256sum`
prints the same digest for plain file names.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20


def directory_digest(root: str | Path) -> tuple[str, int]:
    """(sha256 of the manifest, number of files in it)."""
    lines = manifest_lines(Path(root))
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest(), len(lines)


def manifest_lines(root: Path) -> list[str]:
    files = sorted(_regular_files(root), key=lambda p: p.relative_to(root).as_posix())
    return [f"{_file_sha256(p)}  {p.relative_to(root).as_posix()}\n" for p in files]


def _regular_files(root: Path) -> list[Path]:
    # os.walk does not descend into symlinked directories, so a link cannot pull outside files in.
    found: list[Path] = []
    for directory, _, names in os.walk(root):
        found.extend(Path(directory) / name for name in names if (Path(directory) / name).is_file())
    return found


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()
