"""The host side of the serial protocol (edgekit/bench/protocol.py): line splitting, noise, timer
arithmetic, deadlines, bounds; and property-based tests (Hypothesis) on random and mutated device
output: never an exception other than edgekit's own errors, never a wait past the deadline, bounded memory."""

from __future__ import annotations

import time
from collections import deque

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit.bench.protocol import (
    MAX_ANSWER_BYTES,
    MAX_LINE_BYTES,
    RUNNER_CHUNK,
    Client,
    DeviceReset,
    LineReader,
    lap_us,
    parse_fields,
    upload_chunk,
)
from edgekit.errors import EdgekitError, TransportError, TransportTimeout
from edgekit.transports.base import Transport


class Scripted(Transport):
    """A device that says ``chunks`` in order (one per read), then nothing, or ``forever`` for ever."""

    def __init__(self, chunks: list[bytes], forever: bytes = b"") -> None:
        self.chunks, self.forever = deque(chunks), forever
        self.name = "scripted"
        self.written = b""

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def read(self, n: int, timeout: float) -> bytes:
        if self.chunks:
            return self.chunks.popleft()[:n] or b" "
        if self.forever:
            return self.forever[:n]
        time.sleep(min(timeout, 0.001))
        raise TransportTimeout("nothing")

    def write(self, data: bytes, timeout: float) -> None:
        self.written += data


# ------------------------------------------------------------------ lines


def test_crlf_lf_and_cr_only_line_ends() -> None:
    r = LineReader()
    assert r.feed(b"m-a\r\nm-b\nm-c\rm-d") == ["m-a", "m-b", "m-c"]
    assert r.feed(b"\r") == ["m-d"]


def test_nul_and_ff_noise_glued_to_m_ready_still_ends_the_answer() -> None:
    c = Client(Scripted([b"m-name-dut-[x]\r\n\x00\x00\xff\xffm-ready\r\n"]), timeout=1.0)
    ans = c.command("name")
    assert ans.value("m-name-dut-") == "[x]" and ans.lines[-1] == "m-ready"


def test_printable_noise_before_m_ready_is_counted_and_ends_the_answer() -> None:
    c = Client(Scripted([b"m-lap-us-5\r", b"boot log 12 m-ready\r"]), timeout=1.0)
    ans = c.command("timestamp")
    assert ans.values("m-lap-us-") == ["5"] and c.noise_lines == 1


def test_m_ready_inside_a_longer_word_does_not_end_the_answer() -> None:
    c = Client(Scripted([b"m-ready-not-really\r\n", b"m-x\r\nm-ready\r\n"]), timeout=1.0)
    ans = c.command("name")
    assert ans.lines == ["m-ready-not-really", "m-x", "m-ready"]


def test_a_line_split_across_reads_waits_for_its_end() -> None:
    c = Client(Scripted([b"m-lap", b"-us-12", b"34\r", b"\nm-rea", b"dy\r\n"]), timeout=1.0)
    assert c.command("timestamp").values("m-lap-us-") == ["1234"]


def test_boot_banner_mid_answer_is_a_reset() -> None:
    c = Client(Scripted([b"m-lap-us-1m-timestamp-mode-performance\r\nm-init-done\r\nm-ready\r\n"]), timeout=1.0)
    with pytest.raises(DeviceReset):
        c.command("infer 1 0")


def test_commands_are_terminated_with_percent() -> None:
    t = Scripted([b"m-ready\r\n"])
    Client(t, timeout=1.0).command("db load 64")
    assert t.written == b"db load 64%"


# ------------------------------------------------------------------ deadlines and bounds


def test_silence_says_nothing_arrived() -> None:
    c = Client(Scripted([]), timeout=0.05)
    with pytest.raises(TransportTimeout, match=r"within 0\.05 s; it sent nothing at all"):
        c.command("name")


def test_timeout_after_bytes_says_what_arrived() -> None:
    c = Client(Scripted([b"\x00hello there\r\nm-partial"]), timeout=0.05)
    with pytest.raises(TransportTimeout, match=r"it sent 23 bytes, the last: .*m-partial"):
        c.command("name")


def test_an_endless_stream_of_lines_ends_at_the_deadline() -> None:
    c = Client(Scripted([], forever=b"log: sensor ok\r\n" * 256), timeout=0.2)
    t0 = time.monotonic()
    with pytest.raises(EdgekitError) as exc:
        c.command("name")
    assert time.monotonic() - t0 < 1.5
    assert "log: sensor ok" in str(exc.value)


def test_an_endless_stream_without_line_ends_keeps_memory_bounded() -> None:
    r = LineReader()
    for _ in range(600):
        assert r.feed(b"x" * 4096) == []
    assert len(r.pending) <= MAX_LINE_BYTES and r.cut_lines >= 1


def test_too_much_without_m_ready_is_an_error() -> None:
    line = b"m-" + b"y" * 65536 + b"\r\n"
    c = Client(Scripted([], forever=line), timeout=30.0)
    t0 = time.monotonic()
    with pytest.raises(TransportError, match="in more than 4 MiB; it sent"):
        c.command("name")
    assert time.monotonic() - t0 < 10 and MAX_ANSWER_BYTES < 64 << 20


def test_drain_of_an_endless_stream_stops_at_its_limit() -> None:
    c = Client(Scripted([], forever=b"noise\r\n" * 500), timeout=1.0)
    t0 = time.monotonic()
    assert c.drain(quiet_for=0.05, at_most=0.3) > 0
    assert time.monotonic() - t0 < 1.0


# ------------------------------------------------------------------ the timer and the wire


def test_laps_are_taken_modulo_2_to_the_32() -> None:
    assert lap_us(100, 350, "infer") == 250
    assert lap_us(2**32 - 100, 150, "infer") == 250  # the counter wrapped between the stamps


def test_a_timer_that_does_not_advance_is_an_error() -> None:
    with pytest.raises(TransportError, match="did not advance"):
        lap_us(777, 777, "infer 1 0")


def test_a_timer_that_runs_backwards_is_an_error() -> None:
    with pytest.raises(TransportError, match="went backwards"):
        lap_us(61_000, 0, "infer 1 0")  # -61 ms is not a 71-minute run that wrapped


def test_upload_lines_fit_the_command_buffer() -> None:
    assert upload_chunk(None) == RUNNER_CHUNK == 31
    assert len("db ") + 2 * upload_chunk(None) <= 80  # MLPerf Tiny's EE_CMD_SIZE
    assert upload_chunk(256) == 64 and upload_chunk(80) == 38 and upload_chunk(5) == 1
    for n in range(5, 400):
        assert len("db ") + 2 * upload_chunk(n) <= n


def test_info_fields() -> None:
    assert parse_fields("model=a,sha256=ff,cmd_buffer=256,junk,=x,timer_bits=32") == {
        "model": "a", "sha256": "ff", "cmd_buffer": "256", "timer_bits": "32"}


# ------------------------------------------------------------------ properties

VALID = (b"m-timestamp-mode-performance\r\nm-lap-us-1\r\nm-init-done\r\nm-ready\r\n"
         b"m-warmup-start-1\r\nm-warmup-done\r\nm-infer-start-1\r\nm-lap-us-4294967000\r\nm-lap-us-300\r\n"
         b"m-infer-done\r\nm-results-[0.000,0.996]\r\nm-ready\r\n")


def _drive(chunks: list[bytes], forever: bytes = b"") -> None:
    c = Client(Scripted(chunks, forever), timeout=0.01)
    deadline = time.monotonic() + 2.0
    for cmd in ("name", "infer 1 0", "results"):
        try:
            ans = c.command(cmd)
        except EdgekitError:
            continue  # a clear error is a fine outcome; anything else fails the test
        assert all(ln.isprintable() and ln.isascii() for ln in ans.lines + ans.errors + ans.noise)
        assert ans.lines[-1] == "m-ready"
    assert time.monotonic() < deadline


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), max_size=12))
def test_random_bytes_never_crash_or_hang(chunks: list[bytes]) -> None:
    _drive(chunks)


@st.composite
def mutated(draw: st.DrawFn) -> list[bytes]:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(["flip", "drop", "dup", "insert"]))
        i = draw(st.integers(0, len(data) - 1)) if data else 0
        if op == "flip" and data:
            data[i] = draw(st.integers(0, 255))
        elif op == "drop" and data:
            del data[i : i + draw(st.integers(1, 8))]
        elif op == "dup" and data:
            data[i:i] = data[i : i + draw(st.integers(1, 16))]
        else:
            data[i:i] = draw(st.sampled_from([b"\x00", b"\xff", b"\r", b"\n", b"%", b"m-ready", b"e-[x]"]))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=6)))
    out, last = [], 0
    for c in [*cuts, len(data)]:
        out.append(bytes(data[last:c]))
        last = c
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_answers_never_crash_or_hang(chunks: list[bytes]) -> None:
    _drive(chunks)


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=1, max_size=64))
def test_endless_random_streams_end_at_the_deadline(pattern: bytes) -> None:
    _drive([], forever=pattern)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_lap_arithmetic_is_total(t0: int, t1: int) -> None:
    try:
        d = lap_us(t0, t1, "infer")
    except TransportError:
        assert (t1 - t0) % 2**32 == 0 or (t1 - t0) % 2**32 >= 2**31
    else:
        assert 0 < d < 2**31 and (t0 + d) % 2**32 == t1
