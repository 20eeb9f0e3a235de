"""Inspect a torch.export archive (.pt2) before torch reads any of it.

torch.export.load (torch 2.13) unpickles some members with plain `pickle.loads` or
`torch.load(weights_only=False)`, and dlopens AOTInductor libraries. TORCH_FORCE_WEIGHTS_ONLY_LOAD
covers only the torch.load calls, so a crafted archive could run code during the load. This module
refuses every member torch would unpickle or execute, whatever the file's suffix:

- any JSON member (and every payload config) with a truthy "use_pickle" key, at any depth;
- any payload entry whose path_name torch dispatches to an unpickler by its prefix
  (`opaque_obj_`, `custom_obj_`), whatever its use_pickle flag says;
- any member starting with a pickle protocol 2-5 header, or named *.pkl / *.pickle, except the raw
  tensor storage members the configs name (torch reads those as bytes, never as pickle);
- any AOTInductor member (compiled native code), and any archive with duplicate member names
  (a zip reader may then read a different copy than the one inspected here).

Nested torch.save archives (sample inputs) start with a zip header, not a pickle one: torch loads
them weights-only under TORCH_FORCE_WEIGHTS_ONLY_LOAD, and files.load_export refuses what that rejects.
"""
from __future__ import annotations

import json
import posixpath
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fimaudit.errors import ModelError

# torch.export.load dispatches constants whose path_name starts with these to an unpickler.
_UNPICKLED_PREFIXES = ("opaque_obj_", "custom_obj_")
# torch.export.load dlopens the compiled libraries under this folder (AOTInductor packages).
_NATIVE_CODE_DIR = "data/aotinductor/"
_PICKLE_HEADER = re.compile(rb"\x80[\x02-\x05]")
_PICKLE_SUFFIXES = (".pkl", ".pickle")
# A payload config names a member of its own folder; anything else is not what torch.export.save writes.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.\-]+")
# JSON members are read whole to be parsed; a larger one is refused rather than inspected slowly.
_MAX_JSON_BYTES = 512 * 2**20
_FIX = "re-export the model with torch.export.save from a module whose weights and constants are plain tensors"


def inspect_export_archive(path: Path) -> None:
    """Raise ModelError naming the first member torch.export.load would unpickle or execute."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            _refuse_duplicates(path, infos)
            raw_members: set[str] = set()
            for info in infos:
                if _is_json_or_config(info.filename):
                    raw_members |= _check_json(path, archive, info)
            for info in infos:
                _check_member(path, archive, info, raw_members)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError) as exc:
        raise ModelError(f"cannot read the archive {path} to inspect it: {exc}", "check that the file was written by torch.export.save") from exc


def _refused(path: Path, member: str, reason: str) -> ModelError:
    return ModelError(
        f"{path}: archive member {member!r} {reason}; fimaudit refuses to unpickle or execute it, "
        "since loading it could run arbitrary code.",
        _FIX,
    )


def _refuse_duplicates(path: Path, infos: list[zipfile.ZipInfo]) -> None:
    seen: set[str] = set()
    for info in infos:
        if info.filename in seen:
            raise _refused(path, info.filename, "appears more than once (torch could read a copy other than the one inspected)")
        seen.add(info.filename)


def _is_json_or_config(name: str) -> bool:
    # Payload configs are JSON; torch names them *_config.json, but match "config" loosely on purpose.
    base = posixpath.basename(name).lower()
    return base.endswith(".json") or "config" in base


def _check_json(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> set[str]:
    """Refuse pickled payloads declared in one JSON member; return the raw tensor members it names."""
    name = info.filename
    if info.file_size > _MAX_JSON_BYTES:
        raise _refused(path, name, f"is a {info.file_size}-byte JSON document, too large to inspect")
    try:
        document = json.loads(archive.read(info))
    except (ValueError, RecursionError) as exc:
        if "config" in posixpath.basename(name).lower():  # torch parses payload configs: they must be checkable
            raise _refused(path, name, f"is a payload config that is not valid JSON ({exc})") from exc
        return set()  # torch.export.load parses no other JSON it would act on here
    raw: set[str] = set()
    for where, node in _dicts(document):
        if node.get("use_pickle"):
            raise _refused(path, name, f"marks {where or 'its top level'} as use_pickle (a pickled object torch would unpickle)")
        if "path_name" in node:
            raw.add(_raw_member(path, name, where, node))
    return raw


def _raw_member(path: Path, config: str, where: str, entry: dict[str, Any]) -> str:
    """The member a non-pickled payload entry names; refused when torch would still unpickle it."""
    path_name = entry["path_name"]
    if not isinstance(path_name, str) or not _PLAIN_NAME.fullmatch(path_name):
        raise _refused(path, config, f"gives {where} the path_name {path_name!r}, not a plain member name")
    if path_name.startswith(_UNPICKLED_PREFIXES):
        raise _refused(path, config, f"gives {where} the path_name {path_name!r}, which torch unpickles by its prefix")
    return posixpath.join(posixpath.dirname(config), path_name)


def _dicts(node: Any, where: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every dict in a parsed JSON document with its key path, depth-first, without recursion."""
    stack: list[tuple[str, Any]] = [(where, node)]
    while stack:
        at, value = stack.pop()
        if isinstance(value, dict):
            yield at, value
            stack.extend((f"{at}.{key}" if at else str(key), child) for key, child in value.items())
        elif isinstance(value, list):
            stack.extend((f"{at}[{i}]", child) for i, child in enumerate(value))


def _check_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, raw_members: set[str]) -> None:
    name = info.filename
    if _NATIVE_CODE_DIR in name:
        raise _refused(path, name, "is AOTInductor compiled code, which torch.export.load loads as a native library")
    base = posixpath.basename(name)
    if base.startswith(_UNPICKLED_PREFIXES):
        raise _refused(path, name, "is an opaque or custom object, which torch.export.load unpickles")
    if name in raw_members:
        return  # raw tensor bytes: any leading bytes are legitimate and torch never unpickles them
    if base.lower().endswith(_PICKLE_SUFFIXES):
        raise _refused(path, name, "is a pickle file")
    with archive.open(info) as handle:
        head = handle.read(2)
    if _PICKLE_HEADER.match(head):
        raise _refused(path, name, f"starts with a pickle protocol {head[1]} header")
