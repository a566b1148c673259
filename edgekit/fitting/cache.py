"""The candidate cache: entries keyed by a content hash of every input, verified on every hit.

A hit is delivered only if its record has the right fields and types, names its artifact by one of
the fixed names inside the entry (no paths, no symlinks), and both the record and the artifact hash to
what was recorded when the entry was written; anything else is rebuilt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit import options
from edgekit._hashing import content_hash
from edgekit.fitting.types import Candidate

CACHE_VERSION = "fit-4"  # fit-2: records carry the artifact's and their own sha256; fit-3: memory plans;
# fit-4: level-2 fields (metrics, saved bytes, verification, detail)


def array_hash(*arrays: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(str((a.shape, a.dtype.str)).encode())
        h.update(a.tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def code_hash() -> str:
    """Hash of edgekit's own source: a changed edgekit never reuses an old candidate."""
    h = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent  # the edgekit package
    for f in sorted(root.rglob("*.py")):
        h.update(f.read_bytes())
    return h.hexdigest()


def cache_dir() -> Path:
    root = os.environ.get("EDGEKIT_CACHE_DIR")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "edgekit" / "fit"




_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "str": (str,), "float": (int, float), "int": (int,), "bool": (bool,), "float | None": (int, float, type(None)),
    "dict[str, dict[str, Any]]": (dict,), "list[str]": (list,), "dict[str, float]": (dict,),
    "dict[str, int]": (dict,),
}
ARTIFACT_NAMES = ("model.tflite", "model.mlpackage")
CACHE_RECORD_MAX = 1 << 20


def _record_digest(raw: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()


def _no_symlinks(path: Path) -> bool:
    if path.is_symlink():
        return False
    if path.is_dir():
        for dirpath, dirnames, filenames in os.walk(path):
            if any(Path(dirpath, n).is_symlink() for n in (*dirnames, *filenames)):
                return False
    return True


def load_cached(entry: Path, copy_to: Path) -> tuple[Candidate | None, str]:
    """A verified cache hit, or (None, why it was not usable); ("" when there simply is no entry).

    A hit is trusted only if its record has the right fields and types, names its artifact by one of
    the fixed names inside the entry (no paths, no symlinks), and both the record and the artifact
    hash to what was recorded when the entry was written. The artifact is copied to ``copy_to`` and the
    copy is what is verified (and used), so a concurrent writer cannot swap it afterwards."""
    meta = entry / "candidate.json"
    if not meta.exists() and not meta.is_symlink():
        return None, ""
    try:
        if meta.is_symlink() or not meta.is_file() or meta.stat().st_size > CACHE_RECORD_MAX:
            return None, "its record is not a regular file of sane size"
        doc = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return None, f"its record is unreadable ({type(exc).__name__})"
    if not isinstance(doc, dict) or not isinstance(doc.get("candidate"), dict) or not isinstance(doc.get("verify"),
                                                                                                    dict):
        return None, "its record has the wrong layout"
    raw, verify = doc["candidate"], doc["verify"]
    fields = {f.name: str(f.type) for f in dataclasses.fields(Candidate)}
    if set(raw) != set(fields):
        return None, "its record has the wrong fields"
    for name, annotation in fields.items():
        value = raw[name]
        kinds = _FIELD_TYPES.get(annotation, (object,))
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            return None, f"its field {name!r} has the wrong type"
    if verify.get("record_sha256") != _record_digest(raw):
        return None, "its record does not match its checksum"
    cand = Candidate(**raw)
    if cand.artifact:
        if cand.artifact not in ARTIFACT_NAMES:
            return None, f"it names an artifact outside the entry ({cand.artifact!r})"
        path = entry / cand.artifact
        if not path.exists() or not _no_symlinks(path):
            return None, "its artifact is missing or a symbolic link"
        if not Path(os.path.realpath(path)).is_relative_to(Path(os.path.realpath(entry))):
            return None, "its artifact lies outside the entry"
        try:
            if copy_to.exists():
                shutil.rmtree(copy_to) if copy_to.is_dir() else copy_to.unlink()
            if path.is_dir():
                shutil.copytree(path, copy_to, symlinks=True)
            else:
                shutil.copyfile(path, copy_to, follow_symlinks=False)
            if not _no_symlinks(copy_to):
                return None, "its artifact contains a symbolic link"
            digest = content_hash(copy_to)
        except OSError:
            return None, "its artifact is unreadable"
        if digest != verify.get("artifact_sha256"):
            return None, "its artifact does not match the recorded sha256 (truncated or changed)"
        if copy_to.is_file() and copy_to.stat().st_size != cand.flash_bytes:
            return None, "its artifact's size differs from the recorded flash bytes"
    touch(entry)
    return cand, ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def store_cached(entry: Path, cand: Candidate, artifact: Path | None) -> None:
    tmp = entry.with_name(entry.name + f".tmp-{os.getpid()}")
    try:
        for stale in entry.parent.glob(f"{entry.name}.tmp-*") if entry.parent.is_dir() else ():
            pid = stale.name.rsplit("-", 1)[-1]
            if pid.isdigit() and not _pid_alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        verify: dict[str, str] = {}
        if artifact is not None and cand.artifact:
            if artifact.is_dir():
                shutil.copytree(artifact, tmp / cand.artifact)
            else:
                shutil.copyfile(artifact, tmp / cand.artifact)
            verify["artifact_sha256"] = content_hash(tmp / cand.artifact)
        raw = asdict(cand)
        verify["record_sha256"] = _record_digest(raw)
        (tmp / "candidate.json").write_text(json.dumps({"candidate": raw, "verify": verify}, indent=1))
        if entry.exists() or entry.is_symlink():
            if entry.is_symlink() or not entry.is_dir():
                entry.unlink()
            else:
                shutil.rmtree(entry)
        tmp.rename(entry)
        prune()
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # a cache that cannot be written is not an error


# ------------------------------------------------------------------ size limit, info, clear

CACHE_MAX_BYTES = options.Option("cache_max_bytes", float(2 << 30),
                                 "size limit of the fit cache; the least recently used entries go first")
_ENTRY_NAME = re.compile(r"^[0-9a-f]{64}$")
LAYER_ERRORS_DIR = "layer-errors"


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    bytes: int
    used: float  # last use (mtime of the record, touched on every verified hit)


def entries(root: Path | None = None) -> list[CacheEntry]:
    """The cache's own entries (``xx/<sha256>/candidate.json``); anything else in the folder is not ours."""
    root = root or cache_dir()
    found: list[CacheEntry] = []
    if not root.is_dir():
        return found
    for shard in root.iterdir():
        if not (len(shard.name) == 2 and shard.is_dir() and not shard.is_symlink()):
            continue
        for entry in shard.iterdir():
            record = entry / "candidate.json"
            if (_ENTRY_NAME.match(entry.name) and entry.name.startswith(shard.name) and entry.is_dir()
                    and not entry.is_symlink() and record.is_file()):
                size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file() and not p.is_symlink())
                found.append(CacheEntry(entry, size, record.stat().st_mtime))
    side = root / LAYER_ERRORS_DIR  # the per-layer error records (search._layer_errors), one file each
    if side.is_dir() and not side.is_symlink():
        for f in side.iterdir():
            if f.suffix == ".json" and _ENTRY_NAME.match(f.stem) and f.is_file() and not f.is_symlink():
                st = f.stat()
                found.append(CacheEntry(f, st.st_size, st.st_mtime))
    found += _level3_entries(root / LEVEL3_DIR)
    return sorted(found, key=lambda e: e.used)


LEVEL3_DIR = "level3"  # fitting.level3: fine-tune task folders (xx/<sha256>/task.json) and proxy records


def _level3_entries(l3: Path) -> list[CacheEntry]:
    """The level-3 search's own files: its task folders and its proxies-<sha256>.json records."""
    found: list[CacheEntry] = []
    if not l3.is_dir() or l3.is_symlink():
        return found
    for item in l3.iterdir():
        if item.is_file() and not item.is_symlink() and item.suffix == ".json" and item.stem.startswith("proxies-") \
                and _ENTRY_NAME.match(item.stem.removeprefix("proxies-")):
            st = item.stat()
            found.append(CacheEntry(item, st.st_size, st.st_mtime))
        elif len(item.name) == 2 and item.is_dir() and not item.is_symlink():
            for entry in item.iterdir():
                record = entry / "task.json"
                if (_ENTRY_NAME.match(entry.name) and entry.name.startswith(item.name) and entry.is_dir()
                        and not entry.is_symlink() and record.is_file()):
                    size = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file() and not p.is_symlink())
                    found.append(CacheEntry(entry, size, record.stat().st_mtime))
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def touch_file(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


def touch(entry: Path) -> None:
    """Mark a verified hit as recently used (the size limit drops the least recently used first)."""
    with contextlib.suppress(OSError):
        os.utime(entry / "candidate.json")


def prune(limit: int | None = None, root: Path | None = None) -> list[Path]:
    """Drop least recently used entries until the cache is within ``limit`` bytes; what was removed."""
    limit = int(CACHE_MAX_BYTES.value) if limit is None else limit
    found = entries(root)
    total = sum(e.bytes for e in found)
    removed = []
    for e in found:
        if total <= limit:
            break
        _remove(e.path)
        total -= e.bytes
        removed.append(e.path)
    return removed


def clear(root: Path | None = None) -> tuple[int, int]:
    """Remove every entry (only edgekit's own); (entries, bytes) removed."""
    found = entries(root)
    for e in found:
        _remove(e.path)
    return len(found), sum(e.bytes for e in found)
