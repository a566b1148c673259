"""Architecture-changing compression of Keras 3 functional models (``fit --level 3``).

``kgraph`` (the graph and its channel dependency groups), ``rebuild`` (a new functional model from an old
one with layers replaced and weights sliced), ``prune`` (structured channel pruning that physically shrinks),
``lowrank`` (SVD for Dense, Tucker-2 for Conv2D), ``cost`` (parameters, MACs, activation memory from the
Keras graph), ``distill`` (distillation fine-tune, early stopping, weight QAT), ``lift`` (a Keras model
rebuilt from a float .tflite, for ONNX and SavedModel sources), ``executor``/``worker`` (candidate trainings
in worker processes) and ``search`` (the black-box search over per-group ratios and ranks).
"""
