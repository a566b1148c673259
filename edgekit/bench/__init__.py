"""On-device benchmarking: the serial protocol client, the runner, statistics."""
