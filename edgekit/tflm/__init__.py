"""The TFLM host interpreter, always in a child process (:mod:`edgekit.tflm.worker`), and how to read what
it prints (:mod:`edgekit.tflm.record`): allocation records, refusals and crashes."""
