#!/usr/bin/env python3
"""Regenerate edgekit/codegen/tflm_resolver_methods.json from a TFLM checkout.

    TFLM_ROOT=/path/to/tflite-micro python tools/gen_resolver_methods.py

It reads which MicroMutableOpResolver method registers which builtin operator
(``TfLiteStatus AddConv2D(...) { return AddBuiltin(BuiltinOperator_CONV_2D, ...``);
only those names are kept, no TFLM code.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "edgekit" / "codegen" / "tflm_resolver_methods.json"


def main() -> int:
    root = os.environ.get("TFLM_ROOT")
    if not root:
        print("set TFLM_ROOT to a tflite-micro checkout", file=sys.stderr)
        return 2
    header = Path(root) / "tensorflow" / "lite" / "micro" / "micro_mutable_op_resolver.h"
    text = header.read_text()
    pairs = re.findall(r"TfLiteStatus (Add\w+)\((?:[^{}]*)\)\s*\{\s*return AddBuiltin\(\s*BuiltinOperator_(\w+)", text)
    commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=False).stdout.strip() or "unknown"
    data = {"source": f"tensorflow/tflite-micro micro_mutable_op_resolver.h at {commit} "
                      "(tools/gen_resolver_methods.py)",
            "methods": {op: method for method, op in pairs}}
    OUT.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {len(pairs)} resolver methods to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
