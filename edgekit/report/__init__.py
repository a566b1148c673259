"""Reports: terminal text, JSON, markdown."""
