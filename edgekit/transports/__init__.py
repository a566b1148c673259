"""Transports to devices: serial (pyserial URLs, pseudo-terminals), QEMU, adb."""
