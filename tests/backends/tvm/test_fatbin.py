"""The fatbin scanner on hand-made blobs (needs neither TVM nor nvcc)."""

from __future__ import annotations

import struct

from sparsec.backends.tvm import fatbin


def _entry(kind: int, sm: int, payload: bytes, *, arch_specific: bool = False) -> bytes:
    head = bytearray(64)
    struct.pack_into("<HHIQ", head, 0, kind, 0x101, 64, len(payload))
    struct.pack_into("<I", head, 28, sm)
    struct.pack_into("<Q", head, 40, 0x11 | (0x100000 if arch_specific else 0))
    return bytes(head) + payload


def _fatbin(*entries: bytes) -> bytes:
    body = b"".join(entries)
    return struct.pack("<IHHQ", fatbin.MAGIC, 1, 16, len(body)) + body


def test_entries_and_archs():
    blob = _fatbin(_entry(2, 90, b"\x7fELF" + b"x" * 60, arch_specific=True), _entry(1, 80, b"ptx text"))
    report = fatbin.scan(b"junk" * 10 + blob + b"tail")
    assert report.entries == (fatbin.Entry("cubin", "sm_90a", 64), fatbin.Entry("ptx", "sm_80", 8))
    assert report.archs == ("sm_90a",)  # PTX is not a cubin
    assert not report.cuda_source
    assert fatbin.problems(report, "sm_90a") == []
    assert fatbin.problems(report, "sm_80") == ["holds no sm_80 cubin in a fatbin (cubins found: sm_90a)"]


def test_two_fatbins_in_one_library():
    blob = b"a" * 7 + _fatbin(_entry(2, 80, b"e" * 16)) + b"b" * 5 + _fatbin(_entry(2, 90, b"f" * 16))
    assert fatbin.scan(blob).archs == ("sm_80", "sm_90")


def test_cuda_source_is_found():
    src = b'#include <cuda_fp16.h>\nextern "C" __global__ void __launch_bounds__(128) k(float* x) {}'
    report = fatbin.scan(b"\0" * 100 + src)
    assert report.cuda_source and report.archs == ()
    assert fatbin.problems(report, "sm_90a") == [
        "embeds CUDA source (TVM could not compile the kernels at build time)",
        "holds no sm_90a cubin in a fatbin (cubins found: none)",
    ]


def test_magic_in_random_bytes_is_not_a_fatbin():
    fake = struct.pack("<IHHQ", fatbin.MAGIC, 7, 16, 10) + b"z" * 10  # wrong version
    truncated = struct.pack("<IHHQ", fatbin.MAGIC, 1, 16, 1 << 40)  # runs past the end
    assert fatbin.scan(fake + truncated).entries == ()
