"""Pipeline stages: one module per technique (quantize, coreml, ...)."""
