"""The TFLite flatbuffer schema, from the TFLM package (imports in milliseconds, no TensorFlow).

The generated schema module is loaded from its file: importing it as ``tflite_micro....schema_py_generated``
would run the ``tflite_micro`` package's ``__init__``, which loads the interpreter extension and the
compression tool (yaml, bitarray): ~0.5 s of a ``check``'s cold start for a module that needs only
``flatbuffers``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_NAME = "edgekit._tflite_schema"


def _load() -> ModuleType:
    if _NAME in sys.modules:
        return sys.modules[_NAME]
    spec = importlib.util.find_spec("tflite_micro")  # finds the package without importing it
    if spec is not None and spec.origin:
        path = Path(spec.origin).parent / "tensorflow" / "lite" / "micro" / "python" / "schema_py_generated.py"
        file_spec = importlib.util.spec_from_file_location(_NAME, path) if path.is_file() else None
        if file_spec is not None and file_spec.loader is not None:
            module = importlib.util.module_from_spec(file_spec)
            sys.modules[_NAME] = module
            try:
                file_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[_NAME]
                raise
            return module
    from ai_edge_litert import schema_py_generated  # the package layout changed: LiteRT ships the same schema

    return schema_py_generated


schema_fb: ModuleType = _load()

__all__ = ["schema_fb"]
