"""Put this folder on PYTHONPATH to run edgekit as the core install has it: the packages of the
`convert` extra cannot be imported (every process inherits it, the TFLM worker included)."""

import sys
from importlib.abc import MetaPathFinder

BLOCKED = {"tensorflow", "keras", "tf_keras", "coremltools", "onnx", "onnxruntime", "onnx2tf",
           "onnx_graphsurgeon", "sng4onnx", "PIL", "sklearn", "scipy", "h5py"}


class _Blocker(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked: core install)", name=name)
        return None


sys.meta_path.insert(0, _Blocker())
