"""The fit cache is verified on every hit: a damaged or hostile entry is rebuilt, never delivered."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faults.conftest import FaultRunner

pytestmark = pytest.mark.slow


def _reseal(record: dict) -> dict:  # type: ignore[type-arg]
    """Recompute the record checksum, as a tamperer who knows the format would."""
    raw = record["candidate"]
    record["verify"]["record_sha256"] = hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()
    return record


def _edit(entry: Path, change: Callable[[dict], None], reseal: bool = True) -> None:  # type: ignore[type-arg]
    meta = entry / "candidate.json"
    record = json.loads(meta.read_text())
    change(record)
    meta.write_text(json.dumps(_reseal(record) if reseal else record))


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "truncated": lambda e: (e / "model.tflite").write_bytes((e / "model.tflite").read_bytes()[:1000]),
    "empty": lambda e: (e / "model.tflite").write_bytes(b""),
    "random": lambda e: (e / "model.tflite").write_bytes(os.urandom((e / "model.tflite").stat().st_size)),
    "path-escape": lambda e: _edit(e, lambda r: r["candidate"].update(artifact="../../../etc/hostname")),
    "wrong-types": lambda e: _edit(e, lambda r: r["candidate"].update(flash_bytes="small", fits="yes")),
    "tampered-record": lambda e: _edit(e, lambda r: r["candidate"].update(metric=100.0), reseal=False),
    "symlink": lambda e: ((e / "model.tflite").unlink(), (e / "model.tflite").symlink_to("/etc/hostname")),
    "not-json": lambda e: (e / "candidate.json").write_bytes(b"\xff\x00garbage"),
    "old-layout": lambda e: (e / "candidate.json").write_text(
        json.dumps(json.loads((e / "candidate.json").read_text())["candidate"])),
}


def test_damaged_cache_entries_are_rebuilt_not_delivered(faults: FaultRunner, models: dict[str, Path],
                                                         tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.fitting import fit

    args = ["fit", str(models["keras"]), "-t", "cortex-m4", "--eval", str(models["calib"]), "--candidates", "int8"]
    first = faults.run(*args, "-o", str(tmp_path / "first"))
    assert first.proc.returncode == 0, first.proc.stderr
    good = (tmp_path / "first" / "model.tflite").read_bytes()
    entries = [p.parent for p in faults.cache.rglob("candidate.json")]
    assert len(entries) == 1
    entry = entries[0]
    pristine = {p.name: p.read_bytes() for p in entry.iterdir()}
    # the corruptions run in-process (one TensorFlow import for all of them); the CLI is judged above and below
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(faults.cache))

    def run(out: Path):  # type: ignore[no-untyped-def]
        return fit(models["keras"], "cortex-m4", eval_data=str(models["calib"]), only=["int8"], out_dir=out,
                   quiet=True)

    assert run(tmp_path / "hit").candidates[0].cached is True
    for name, corrupt in CORRUPTIONS.items():
        for p in entry.iterdir():
            p.unlink()
        for fname, content in pristine.items():
            (entry / fname).write_bytes(content)
        corrupt(entry)
        out = tmp_path / name
        result = run(out)
        assert result.fits and result.candidates[0].cached is False, name
        assert any("cache entry for int8 was not used" in n for n in result.notes), (name, result.notes)
        assert (out / "model.tflite").read_bytes() == good, name  # the rebuilt artifact, not the damaged one
    # the last rebuild rewrote the entry whole, and it verifies again - through the CLI
    again = faults.run(*args, "-o", str(tmp_path / "again"), "--json")
    assert again.proc.returncode == 0, again.proc.stderr
    assert json.loads(again.proc.stdout)["candidates"][0]["cached"] is True
    assert (tmp_path / "again" / "model.tflite").read_bytes() == good
    faults.assert_clean()
