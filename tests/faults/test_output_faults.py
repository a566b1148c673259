"""Output paths, publishing and interruption: never lose or replace what edgekit did not write, find
every output problem before the work starts, and leave nothing behind.

Read-only and full file systems are real: a tmpfs mounted in a private mount namespace
(``unshare -rm``, no root needed where user namespaces are allowed)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, as_other_user
from tests.faults.conftest import FaultRunner, assert_untouched, snapshot

pytestmark = pytest.mark.slow


def _can_unshare() -> str | None:
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt"], capture_output=True,
                           check=False)
    if probe.returncode != 0:
        return "user and mount namespaces are not allowed here: " + probe.stderr.decode(errors="replace")[:200]
    return None


UNSHARE = _can_unshare()


def _in_tmpfs(mount: Path, options: str, fill: int = 0) -> list[str]:
    """A command prefix that runs the CLI with ``mount`` as a fresh tmpfs (``options``), optionally
    filled with ``fill`` bytes first, in a private mount namespace that vanishes with the process; after
    the CLI it prints ``@@left`` and what the mount holds (the filler excepted)."""
    script = f'mount -t tmpfs -o {options} tmpfs "$0" || exit 99; '
    if fill:
        script += f'head -c {fill} /dev/zero > "$0/.filler" 2>/dev/null; '
    script += '"$@"; code=$?; echo @@left; ls -A "$0" | grep -v "^.filler$"; exit $code'
    return ["unshare", "-rm", "sh", "-c", script, str(mount)]


def _run_wrapped(prefix: list[str], args: list[str], env: dict[str, str], timeout: float = 120
                 ) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    proc = subprocess.run([*prefix, sys.executable, "-m", "edgekit", *args], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env}, timeout=timeout, check=False)
    assert "@@left" in proc.stdout, proc.stdout + proc.stderr
    return proc, proc.stdout.split("@@left", 1)[1].split()


# ----------------------------------------------------------------- output paths


def test_force_never_deletes_the_input_or_user_files(faults: FaultRunner, models: dict[str, Path],
                                                     tmp_path: Path) -> None:
    user = tmp_path / "work"
    user.mkdir()
    model = user / "model.tflite"
    model.write_bytes(models["int8"].read_bytes())
    (user / "notes.txt").write_text("mine")
    before = snapshot(user)
    faults.error("codegen", str(model), "-t", "cortex-m4", "-o", str(user), "--force", needle="contains the input")
    assert_untouched(user, before)
    other = tmp_path / "other"
    other.mkdir()
    (other / "main.c").write_text("int main(void) { return 0; }\n")
    before = snapshot(other)
    faults.error("codegen", str(models["int8"]), "-t", "cortex-m4", "-o", str(other), "--force",
                 needle=("--force refused", "main.c"))
    assert_untouched(other, before)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_force_replaces_only_what_edgekit_wrote_unchanged(faults: FaultRunner, models: dict[str, Path],
                                                          tmp_path: Path) -> None:
    out = tmp_path / "gen"
    ok = faults.run("codegen", str(models["int8"]), "-t", "cortex-m4", "-o", str(out))
    assert ok.proc.returncode == 0, ok.proc.stderr
    manifest = json.loads((out / ".edgekit-output.json").read_text())
    assert manifest["command"] == "codegen" and "model_data.cc" in manifest["files"]
    again = faults.run("codegen", str(models["int8"]), "-t", "cortex-m4", "-o", str(out), "--force")
    assert again.proc.returncode == 0, again.proc.stderr
    # a file the user added, or an edit to one edgekit wrote, makes the directory partly the user's
    (out / "my_board.c").write_text("/* mine */\n")
    before = snapshot(out)
    faults.error("codegen", str(models["int8"]), "-t", "cortex-m4", "-o", str(out), "--force",
                 needle="my_board.c")
    assert_untouched(out, before)
    (out / "my_board.c").unlink()
    (out / "model_settings.h").write_text((out / "model_settings.h").read_text() + "// tuned by hand\n")
    before = snapshot(out)
    faults.error("codegen", str(models["int8"]), "-t", "cortex-m4", "-o", str(out), "--force",
                 needle="model_settings.h")
    assert_untouched(out, before)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging, lock or backup


@pytest.mark.parametrize("case", ["dot", "parent-of-cwd", "empty", "file", "file-force", "below-file"])
def test_bad_output_paths_are_refused_before_any_work(faults: FaultRunner, models: dict[str, Path],
                                                      tmp_path: Path, case: str) -> None:
    cwd = tmp_path / "a" / "b"
    cwd.mkdir(parents=True)
    (cwd / "keep.txt").write_text("keep")
    (tmp_path / "plain.txt").write_text("a file")
    out, needle, force = {
        "dot": (".", "current directory", True),
        "parent-of-cwd": (str(tmp_path / "a"), "contains the current directory", True),
        "empty": ("", "output path is empty", False),
        "file": (str(tmp_path / "plain.txt"), "is an existing file", False),
        "file-force": (str(tmp_path / "plain.txt"), "is an existing file", True),
        "below-file": (str(tmp_path / "plain.txt" / "sub"), "is a file, not a directory", False),
    }[case]
    before = snapshot(tmp_path)
    for command in (["codegen", str(models["int8"]), "-t", "cortex-m4"],
                    ["analyze", str(models["int8"]), "-t", "cortex-m4"],
                    ["fit", str(models["keras"]), "-t", "cortex-m4", "--eval", str(models["calib"])]):
        faults.error(*command, "-o", out, *(["--force"] if force else []), needle=needle, cwd=cwd, max_seconds=20)
        assert_untouched(tmp_path, before)


def test_demo_checks_targets_and_output_before_training(faults: FaultRunner, tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    faults.error("demo", "-t", "nosuch", needle="nosuch", max_seconds=10)
    faults.error("demo", "-o", str(tmp_path / "f"), needle="is a file", max_seconds=10)


@pytest.mark.skipif(UNSHARE is not None, reason=str(UNSHARE))
def test_read_only_and_full_file_systems_are_found_before_the_work(models: dict[str, Path],
                                                                   tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = {"TMPDIR": str(tmp_path)}
    fit_args = ["fit", str(models["keras"]), "-t", "cortex-m4", "--eval", str(models["calib"]),
                "--candidates", "int8"]
    for prefix, needle in ((_in_tmpfs(mnt, "ro"), "cannot write in"),
                           (_in_tmpfs(mnt, "size=256k", fill=256 * 1024), "not enough free space")):
        t0 = time.monotonic()
        proc, left = _run_wrapped(prefix, [*fit_args, "-o", str(mnt / "out")], env)
        assert proc.returncode == 2, proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and needle in lines[0] and "Traceback" not in proc.stderr, proc.stderr
        assert time.monotonic() - t0 < 20  # before the conversion and evaluation, not after
        assert left == []


@pytest.mark.skipif(UNSHARE is not None, reason=str(UNSHARE))
def test_disk_full_while_writing_leaves_nothing(models: dict[str, Path], tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    # room for the start-up check (its minimum set to 0) but not for the ~350 KB C array
    proc, left = _run_wrapped(_in_tmpfs(mnt, "size=64k"),
                              ["codegen", str(models["int8"]), "-t", "cortex-m4", "-o", str(mnt / "gen")],
                              {"EDGEKIT_OUTPUT_MIN_FREE_BYTES": "0", "TMPDIR": str(tmp_path)})
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "No space left on device" in lines[0] and "Traceback" not in proc.stderr, lines
    assert left == []  # no half-written output, no staging directory, no lock file


# ----------------------------------------------------------------- two runs, one output


def test_two_fits_to_the_same_output_never_lose_a_result(faults: FaultRunner, models: dict[str, Path],
                                                         tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["fit", str(models["keras"]), "-t", "cortex-m4", "--eval", str(models["calib"]), "--candidates",
            "int8", "-o", str(out), "--no-cache"]
    (tmp_path / "tmp1").mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path / "tmp1")}
    first = subprocess.Popen([sys.executable, "-m", "edgekit", *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    try:
        lock = tmp_path / ".out.edgekit-lock"
        deadline = time.monotonic() + 30
        while not lock.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lock.exists(), "the first run never locked its output"
        second = faults.error(*args, needle=("another edgekit run", f"pid {first.pid}"), max_seconds=20)
        assert second.proc.stdout == ""
        _, stderr = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, stderr
    assert (out / "model.tflite").is_file() and (out / "report.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert list((tmp_path / "tmp1").iterdir()) == []


def test_publish_never_replaces_what_appeared_meanwhile(tmp_path: Path) -> None:
    from edgekit.errors import OutputExistsError
    from edgekit.output import Output

    out = tmp_path / "o"
    with Output(out, command="test") as o:
        o.write("a.txt", "edgekit's")
        out.mkdir()
        (out / "theirs.txt").write_text("someone else's")
        with pytest.raises(OutputExistsError, match="created by someone else"):
            o.publish()
    assert [p.name for p in out.iterdir()] == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_published_directories_follow_the_umask(faults: FaultRunner, models: dict[str, Path],
                                                tmp_path: Path) -> None:
    out = tmp_path / "gen"
    old = os.umask(0o022)
    try:
        proc = faults.run("codegen", str(models["int8"]), "-t", "cortex-m4", "-o", str(out))
    finally:
        os.umask(old)
    assert proc.proc.returncode == 0, proc.proc.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert stat.S_IMODE((out / "model_data.cc").stat().st_mode) == 0o644


def test_stale_staging_of_a_killed_run_is_cleaned(faults: FaultRunner, models: dict[str, Path],
                                                  tmp_path: Path) -> None:
    stale = tmp_path / ".gen.tmp-abc123"
    stale.mkdir()
    (stale / ".edgekit-staging").write_text("999999\n")
    (stale / "model_data.cc").write_text("half")
    foreign = tmp_path / ".gen.tmp-users-own"
    foreign.mkdir()
    proc = faults.run("codegen", str(models["int8"]), "-t", "cortex-m4", "-o", str(tmp_path / "gen"))
    assert proc.proc.returncode == 0, proc.proc.stderr
    assert not stale.exists() and foreign.is_dir()  # only what carries edgekit's staging mark


# ----------------------------------------------------------------- interruption and $TMPDIR


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_during_fit_leaves_nothing(faults: FaultRunner, models: dict[str, Path], tmp_path: Path,
                                            sig: signal.Signals) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(faults.tmpdir),
           "EDGEKIT_CACHE_DIR": str(faults.cache)}
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "fit", str(models["keras"]), "-t", "cortex-m4",
                             "--eval", str(models["calib"]), "-o", str(out)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        # wait until the run has real work under way: its TFLM worker child exists
        while time.monotonic() < deadline:
            kids = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            if kids.exists() and kids.read_text().split() and list(faults.tmpdir.iterdir()):
                break
            time.sleep(0.1)
        time.sleep(1.0)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + sig, stderr
    assert "Traceback" not in stderr and len([ln for ln in stderr.splitlines() if ln.strip()]) <= 2, stderr
    assert not out.exists()
    assert list(faults.tmpdir.iterdir()) == [], list(faults.tmpdir.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_run_directories_of_dead_processes_are_removed(faults: FaultRunner, tmp_path: Path) -> None:
    dead = faults.tmpdir / "edgekit-run-999999-x1"
    dead.mkdir()
    (dead / ".edgekit-owner").write_text("999999 1\n")
    (dead / "tmpabc").mkdir()
    not_ours = faults.tmpdir / "edgekit-run-999998-x2"  # no owner file: not provably edgekit's
    not_ours.mkdir()
    proc = faults.run("targets", "list")
    assert proc.proc.returncode == 0
    assert not dead.exists() and not_ours.is_dir()
    not_ours.rmdir()
    faults.assert_clean()


# ----------------------------------------------------------------- arguments


def test_no_command_is_one_line(faults: FaultRunner) -> None:
    faults.error(needle="no command given", max_seconds=10)


def test_empty_candidate_list_is_refused(faults: FaultRunner, models: dict[str, Path], tmp_path: Path) -> None:
    faults.error("fit", str(models["keras"]), "-t", "cortex-m4", "--eval", str(models["calib"]), "-o",
                 str(tmp_path / "o"), "--candidates", ",", needle="names no ladder step", max_seconds=20)
    assert not (tmp_path / "o").exists()


def test_another_users_run_directory_is_left_alone(tmp_path: Path) -> None:
    """A shared $TMPDIR holds other users' run directories (0700): unreadable to us, never an error, never
    removed."""
    import tempfile

    cmd = [sys.executable, "-m", "edgekit", "targets", "list"]
    if os.geteuid() == 0:  # root reads everything: be another user for the run
        cmd = as_other_user(cmd)
    shared = Path(tempfile.mkdtemp(prefix="edgekit-shared-tmp-", dir="/tmp"))  # reachable by every user
    shared.chmod(0o1777)
    theirs = shared / "edgekit-run-1-abcdef"
    theirs.mkdir()
    (theirs / ".edgekit-owner").write_text("1 1\n")
    theirs.chmod(0o700 if os.geteuid() == 0 else 0o000)
    env = {**os.environ, "TMPDIR": str(shared), "PYTHONPATH": str(ROOT)}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60, check=False)
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        theirs.chmod(0o700)
        assert theirs.is_dir() and (theirs / ".edgekit-owner").is_file()
        assert sorted(p.name for p in shared.iterdir()) == [theirs.name]  # and the run cleaned up after itself
    finally:
        theirs.chmod(0o700)
        shutil.rmtree(shared, ignore_errors=True)
