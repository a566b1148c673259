"""Output directories: checked before any work starts, locked while a run owns them, staged beside the
target and published with one rename that never replaces what edgekit did not write.

Rules (issue 8, "no silent corruption, no data loss"):

- ``-o`` must name a directory path: not empty, not an existing file, not below a regular file, and not
  the current directory, an input, or a directory that contains either (``--force`` there would delete
  them).
- An existing non-empty directory is replaced only with ``--force``, and only if edgekit wrote it: it
  carries edgekit's manifest (``.edgekit-output.json``) and every file in it is one edgekit wrote,
  unchanged (sha256 recorded at publish time).
- A run holds an exclusive lock on the output path from the check to the publish: a second run to
  the same ``-o`` is refused at once instead of silently replacing the first one's result.
- The publish is a rename of a finished sibling directory; without ``--force`` it fails if anything
  appeared at the target meanwhile. Published directories follow the umask (temporary directories are
  created 0700).
- The parent must be writable and have room, and this is found out before the work starts.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from edgekit import options
from edgekit.errors import GenerationError, OutputExistsError

MANIFEST = ".edgekit-output.json"
STAGING_MARK = ".edgekit-staging"
MIN_FREE = options.Option("output_min_free_bytes", float(1 << 20),
                          "free bytes the output's file system must have before a run starts (plus the "
                          "command's own estimate of what it writes)")


class OutputError(GenerationError):
    """An output path that cannot or must not be written."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgekit")
    except PackageNotFoundError:
        return "0+unknown"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _is_within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _absolute(p: Path) -> Path:
    """Absolute, with symlinks of the existing part resolved (the rest kept as written)."""
    return Path(os.path.realpath(p))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 for files, "dir" for directories, "link" for symlinks (not followed)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for d in dirnames:
            rel = str((base / d).relative_to(root))
            out[rel] = "link" if (base / d).is_symlink() else "dir"
        for f in filenames:
            p = base / f
            rel = str(p.relative_to(root))
            out[rel] = "link" if p.is_symlink() or not p.is_file() else _sha256(p)
    return out


def check_path(out: str | os.PathLike[str], force: bool,
               inputs: Iterable[str | os.PathLike[str] | None] = ()) -> None:
    """Every check that needs no lock: raise OutputError/OutputExistsError with one clear line."""
    if os.fspath(out) == "":
        raise OutputError("the output path is empty (-o '')", "give a directory to write to, e.g. -o out/")
    out = Path(out)
    target = _absolute(out)
    cwd = _absolute(Path.cwd())
    if _is_within(cwd, target):
        what = "is the current directory" if cwd == target else "contains the current directory"
        raise OutputError(f"output directory {out} {what}; edgekit will not write or replace it",
                          "choose a new sub-directory, e.g. -o out/")
    for item in inputs:
        if item is None or str(item) == "":
            continue
        src = _absolute(Path(item))
        if _is_within(src, target):
            what = "is" if src == target else "contains"
            raise OutputError(f"output directory {out} {what} the input {item}; edgekit will not write over "
                              "its own inputs", "choose another -o")
    # the existing part of the path must be directories
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe != target and not probe.is_dir():
        raise OutputError(f"cannot create output directory {out}: {probe} is a file, not a directory",
                          "choose another -o")
    if target.exists() and not target.is_dir():
        raise OutputError(f"output path {out} is an existing file, not a directory",
                          "give a directory path to -o (edgekit writes several files)")
    if target.is_dir() and any(target.iterdir()):
        if not force:
            raise OutputExistsError(f"output directory {out} exists and is not empty",
                                    "pass --force to replace it (only if edgekit wrote it), or choose another -o")
        foreign = foreign_files(target)
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise OutputError(f"--force refused: {out} holds files edgekit did not write or that changed since "
                              f"({shown})", "move them out, delete the directory yourself, or choose another -o")


def foreign_files(directory: Path) -> list[str]:
    """Entries of ``directory`` that edgekit's manifest does not vouch for (all of them without one)."""
    manifest = directory / MANIFEST
    try:
        recorded = json.loads(manifest.read_text(encoding="utf-8"))["files"] if manifest.is_file() else None
        if recorded is not None and not (isinstance(recorded, dict)
                                         and all(isinstance(v, str) for v in recorded.values())):
            recorded = None
    except (OSError, ValueError, KeyError, TypeError):
        recorded = None
    present = _tree(directory)
    present.pop(MANIFEST, None)
    if recorded is None:
        return sorted(present) or [MANIFEST]
    return sorted(rel for rel, digest in present.items() if recorded.get(rel) != digest)


def _free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class Output:
    """One output directory for the length of a run. ``open()`` at the start (checks, lock, staging
    directory, room), write into ``stage``, then ``publish()``; ``close()`` always (it aborts an
    unpublished stage and releases the lock). Usable as a context manager."""

    def __init__(self, out: str | os.PathLike[str], force: bool = False,
                 inputs: Iterable[str | os.PathLike[str] | None] = (), command: str = "",
                 expected_bytes: int = 0) -> None:
        self.raw = os.fspath(out)
        self.out = Path(out)
        self.force = force
        self.inputs = list(inputs)
        self.command = command
        self.expected_bytes = expected_bytes
        self.stage: Path = Path()
        self._lock_fd: int | None = None
        self._lock_path: Path | None = None
        self._staged = False
        self.published = False

    # ------------------------------------------------------------------ life cycle

    def open(self) -> Output:
        check_path(self.raw, self.force, self.inputs)
        target = _absolute(self.out)
        parent = target.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot create {parent} for output {self.out}: {exc.strerror}",
                              "check the path and its permissions") from None
        need = int(MIN_FREE.value) + self.expected_bytes
        free = _free_bytes(parent)
        if free < need:
            raise OutputError(f"not enough free space for output {self.out}: {free:,} B free in {parent}, "
                              f"at least {need:,} B needed", "free some space or choose another -o")
        self._lock(parent, target.name)
        try:
            self._clean_stale(parent, target.name)
            try:
                self.stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
                (self.stage / STAGING_MARK).write_text(f"{os.getpid()}\n")
            except OSError as exc:
                raise OutputError(f"cannot write in {parent} (for output {self.out}): {exc.strerror}",
                                  "choose a writable location for -o") from None
            self._staged = True
            check_path(self.raw, self.force, self.inputs)  # again, now that the path is ours
        except BaseException:
            self.close()
            raise
        return self

    def _lock(self, parent: Path, name: str) -> None:
        path = parent / f".{name}.edgekit-lock"
        for _ in range(5):
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise OutputError(f"cannot write in {parent} (for output {self.out}): {exc.strerror}",
                                  "choose a writable location for -o") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = ""
                with contextlib.suppress(OSError, ValueError):
                    holder = f" (pid {int(os.pread(fd, 32, 0).split()[0])})"
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise OutputError(f"another edgekit run{holder} is writing {self.out}",
                                      "wait for it to finish, or choose another -o") from None
                raise OutputError(f"cannot lock output {self.out}: {exc.strerror}") from None
            # the file may have been unlinked by the previous holder between open and flock: retry
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except OSError:
                same = False
            if same:
                with contextlib.suppress(OSError):  # the pid is for the message only
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
                self._lock_fd, self._lock_path = fd, path
                return
            os.close(fd)
        raise OutputError(f"cannot lock output {self.out}: the lock file keeps changing")

    def _clean_stale(self, parent: Path, name: str) -> None:
        """Staging and backup directories of earlier runs for this path that died (we hold the lock, so
        no live run owns them). Only directories carrying edgekit's staging mark are removed."""
        for pattern in (f".{name}.tmp-*", f".{name}.old-*"):
            for d in parent.glob(pattern):
                if d.is_dir() and not d.is_symlink() and (d / STAGING_MARK).is_file():
                    shutil.rmtree(d, ignore_errors=True)

    def publish(self) -> Path:
        """Move the finished stage into place (with a manifest of what it holds, at the umask's mode)."""
        if not self._staged:
            raise OutputError(f"output {self.out} was not opened")
        target = _absolute(self.out)
        try:
            (self.stage / STAGING_MARK).unlink()
            files = _tree(self.stage)
            (self.stage / MANIFEST).write_text(json.dumps(
                {"generator": f"edgekit {_version()}", "command": self.command, "files": files},
                indent=1, sort_keys=True) + "\n", encoding="utf-8")
            mode = 0o777 & ~_umask()
            self.stage.chmod(mode)
            for rel, kind in files.items():
                if kind == "dir":
                    (self.stage / rel).chmod(mode)
        except OSError as exc:
            raise OutputError(f"cannot finish output {self.out}: {exc.strerror}") from None
        backup: Path | None = None
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            if not self.force:
                raise OutputExistsError(f"output directory {self.out} was created by someone else while this run "
                                        "worked; it was left as it is and this run's result discarded",
                                        "choose another -o")
            foreign = foreign_files(target)
            if foreign:
                raise OutputError(f"--force refused: {self.out} now holds files edgekit did not write "
                                  f"({', '.join(foreign[:3])})", "choose another -o")
            backup = target.with_name(f".{target.name}.old-{os.getpid()}")
            try:
                target.rename(backup)
                (backup / STAGING_MARK).write_text(f"{os.getpid()}\n")
            except OSError as exc:
                raise OutputError(f"cannot replace {self.out}: {exc.strerror}") from None
        try:
            os.rename(self.stage, target)  # onto a missing or empty directory only
        except OSError as exc:
            if backup is not None:
                with contextlib.suppress(OSError):
                    backup.rename(target)
                    (target / STAGING_MARK).unlink()
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise OutputExistsError(f"output {self.out} was created by someone else while this run worked; "
                                        "it was left as it is and this run's result discarded",
                                        "choose another -o") from None
            raise OutputError(f"cannot publish output {self.out}: {exc.strerror}") from None
        self._staged = False
        self.published = True
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
        return target

    def close(self) -> None:
        if self._staged:
            shutil.rmtree(self.stage, ignore_errors=True)
            self._staged = False
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                if self._lock_path is not None:
                    self._lock_path.unlink()
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> Output:
        return self.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ------------------------------------------------------------------ writing

    def write(self, rel: str, content: str | bytes | Path, executable: bool | None = None) -> Path:
        """Write one file (text, bytes, or a file/directory to copy) into the stage; scripts (``*.sh``,
        ``gradlew``, or ``executable=True``) get the execute bits the umask allows."""
        dst = self.stage / rel
        if not _is_within(Path(os.path.normpath(dst)), self.stage):
            raise OutputError(f"refusing to write {rel!r} outside the output directory")
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, Path):
                if content.is_dir():
                    shutil.copytree(content, dst, symlinks=False)
                else:
                    shutil.copyfile(content, dst)
            elif isinstance(content, bytes):
                dst.write_bytes(content)
            else:
                dst.write_text(content, encoding="utf-8")
            if executable or (executable is None and rel.endswith((".sh", "gradlew"))):
                dst.chmod(0o777 & ~_umask())
        except OSError as exc:
            raise OutputError(f"cannot write {rel} for output {self.out}: {exc.strerror}",
                              "check the free space and permissions of the output location") from None
        return dst
