"""Run MLPerf Tiny's own runner (mlcommons/tiny ``benchmark/runner/main.py``) against a device on a
pseudo-terminal or any serial path, unchanged.

The runner finds its devices by USB vendor and product ids (``serial.tools.list_ports.comports()`` and
``usb.core.find()``). A pty has no USB ids, so this shim, before running ``main.py`` as ``__main__``:

- makes ``comports()`` list exactly one port, PORT, with the vid/pid of the DUT entry in the device list
  the runner is given (``--device_list``), so the runner's own scan matches it as the DUT;
- makes ``usb.core.find()`` find no USB-only devices (energy monitors), and provides a ``usb`` module
  if pyusb is not installed (only that scan uses it);
- provides a ``matplotlib.pyplot`` that refuses to be used if matplotlib is not installed (the runner
  plots only in energy mode).

Everything else (protocol, timing, data upload, results) is the runner's own code. Usage:

    python -m tests.doubles.mlperf_runner_shim --runner TINY/benchmark/runner --port /dev/pts/3 \\
        [--workdir DIR] -- --dataset_path=DATA --device_list=devices_kws_ic_vww.yaml --mode=p
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
import types
from pathlib import Path
from typing import Any


def _dut_ids(device_list: Path) -> tuple[int, int]:
    import yaml

    for dev in yaml.safe_load(device_list.read_text()) or []:
        if isinstance(dev, dict) and dev.get("type") == "dut":
            for vid, pids in (dev.get("usb") or {}).items():
                pid = pids[0] if isinstance(pids, list) else pids
                return int(vid), int(pid)
    raise SystemExit(f"mlperf_runner_shim: no DUT with usb ids in {device_list}")


def _install_stubs(port: str, vid: int, pid: int) -> None:
    from serial.tools import list_ports, list_ports_common

    info = list_ports_common.ListPortInfo(port, skip_link_detection=True)
    info.vid, info.pid, info.description = vid, pid, f"edgekit shim for {port}"
    list_ports.comports = lambda *a, **k: [info]  # type: ignore[assignment]
    try:
        import usb.core

        usb.core.find = lambda *a, **k: []  # type: ignore[assignment]
    except ImportError:
        usb = types.ModuleType("usb")
        core = types.ModuleType("usb.core")
        core.find = lambda *a, **k: []  # type: ignore[attr-defined]
        usb.core = core  # type: ignore[attr-defined]
        sys.modules["usb"], sys.modules["usb.core"] = usb, core
    try:
        import matplotlib.pyplot  # noqa: F401
    except ImportError:
        def refuse(*a: Any, **k: Any) -> None:
            raise RuntimeError("matplotlib is not installed (the runner plots only in energy mode)")

        mpl = types.ModuleType("matplotlib")
        plt = types.ModuleType("matplotlib.pyplot")
        for name in ("plot", "clf", "grid", "savefig", "figure", "close"):
            setattr(plt, name, refuse)
        mpl.pyplot = plt  # type: ignore[attr-defined]
        sys.modules["matplotlib"], sys.modules["matplotlib.pyplot"] = mpl, plt


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    rest: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, rest = argv[:i], argv[i + 1 :]
    p = argparse.ArgumentParser(prog="mlperf_runner_shim")
    p.add_argument("--runner", required=True, help="mlcommons/tiny benchmark/runner directory")
    p.add_argument("--port", required=True, help="the DUT's serial path (a pty)")
    p.add_argument("--workdir", help="where the runner writes sessions/ (default: the current directory)")
    a = p.parse_args(argv)
    runner = Path(a.runner).resolve()
    device_list = "devices.yaml"
    for i, arg in enumerate(rest):
        if arg.startswith(("--device_list=", "-d=")):
            device_list = arg.split("=", 1)[1]
        elif arg in ("--device_list", "-d") and i + 1 < len(rest):
            device_list = rest[i + 1]
    dl = Path(device_list)
    vid, pid = _dut_ids(dl if dl.is_absolute() else runner / dl)
    _install_stubs(a.port, vid, pid)
    if a.workdir:
        os.chdir(a.workdir)
    # the runner resolves its yaml files against the current directory: pass absolute paths
    fixed = []
    for arg in rest:
        key, sep, value = arg.partition("=")
        if sep and key in ("--device_list", "--test_script", "-d", "-t") and not Path(value).is_absolute():
            arg = f"{key}={runner / value}"
        fixed.append(arg)
    sys.path.insert(0, str(runner))
    sys.argv = [str(runner / "main.py"), *fixed]
    runpy.run_path(str(runner / "main.py"), run_name="__main__")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
