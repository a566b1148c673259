"""On-target measurement: the generated firmware, built for the profile's core, run on QEMU's board for it.

- :mod:`edgekit.measure.build`: the cmake scaffold built for the core (``BOARD=qemu QEMU_CORE=target``)
  against the user's TFLM (``TFLM_ROOT``), cached by model hash, target and TFLM library;
- :mod:`edgekit.measure.qemu`: boots it under ``qemu-system-arm -icount shift=0`` and reads the smallest
  arena that allocates, the instruction-proportional time per operator and the firmware's exact sizes.

``edgekit analyze --measure qemu`` is the command; :func:`edgekit.measure.qemu.measure_qemu` the API.
"""
