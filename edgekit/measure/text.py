"""Terminal lines for a QEMU measurement (``analyze --measure qemu``)."""

from __future__ import annotations

from edgekit.measure.qemu import QemuMeasurement


def render_measurement(m: QemuMeasurement, host_arena: int | None = None) -> list[str]:
    fw, parts = m.firmware, m.flash_parts
    cached = " (from the measurement cache)" if m.cached else f" (built in {m.build_seconds:.0f} s)"
    lines = [
        f"measured on QEMU {m.machine}: {m.machine_note}, TFLM {m.kernels}{cached}",
        f"  firmware  {fw['flash']:,} B flash (.text {fw['text']:,} + .data {fw['data']:,}): "
        f"model {parts['model']:,} + TFLM {parts['tflm']:,} + C library {parts['c_library']:,} + "
        f"application {parts['application']:,}; "
        f".bss {fw['bss']:,} B (the measurement's {m.arena_reserved:,} B arena included)",
        f"  arena     {m.arena_min:,} B: the smallest that allocates on {m.core} (16 B less does not); TFLM's "
        f"arena_used_bytes() {m.arena_used:,} B" + (f"; host interpreter {host_arena:,} B" if host_arena else ""),
        f"  time      {m.inference_us:,.1f} us virtual per inference = {m.instructions:,} instructions "
        f"(-icount shift=0, {m.runs} runs; not board milliseconds)",
    ]
    width = max((len(o.op) for o in m.ops), default=2)
    for o in m.ops:
        calls = f"{o.calls:g}x"
        lines.append(f"    {o.op.ljust(width)}  {calls:>5}  {o.us:>12,.2f} us  {o.share * 100:5.1f}%")
    lines.append(f"    operators sum to {m.ops_us:,.1f} us ({m.ops_vs_inference * 100:+.2f}% of the inference; the "
                 "rest is the interpreter between operators and the input copy)")
    lines.append(f"  output    {m.output_check}")
    return lines
