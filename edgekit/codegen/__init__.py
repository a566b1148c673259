"""Code generation: C arrays, model settings and op resolver headers, firmware scaffolds."""
