"""Model analysis: graph reading, TFLM arena measurement, compatibility checks."""
