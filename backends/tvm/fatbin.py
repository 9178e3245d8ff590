"""What GPU code an exported TVM library holds: fatbins (and for which archs) or CUDA source.

TVM serialises a CUDA module into the exported ``.so`` as a blob: either the
compiled fatbin (what ships) or, when it could not compile at build time, the
CUDA C source, which the runtime would have to JIT-compile with NVRTC on the
GPU host. :func:`scan` finds both; :func:`check` refuses a library that holds
source, or no fatbin for the target's arch.

Fatbin layout (little endian; the layout nvcc writes, as documented by the
open fatbinary parsers)::

    header  u32 magic 0xBA55ED50, u16 version (1), u16 header_size (16), u64 payload size
    entry   u16 kind (1 PTX, 2 ELF cubin), u16 version, u32 header_size, u64 payload size,
            ... u32 sm (at byte 28: 90 for sm_90), ... u64 flags (at byte 40)

The architecture-specific variant (``sm_90a``) sets bit ``0x100000`` of the
entry flags; nvcc 13's sm_90 and sm_90a builds of one kernel differ in that
bit alone (pinned by tests/backends/tvm/test_fatbin.py).

Example:
    >>> report = scan(Path("model.so").read_bytes())
    >>> report.archs, report.cuda_source
    (('sm_90a',), False)
"""

from __future__ import annotations

import dataclasses
import struct

MAGIC = 0xBA55ED50
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_KINDS = {1: "ptx", 2: "cubin"}
_ARCH_SPECIFIC = 0x100000
# What TVM's CUDA codegen writes at the top of every kernel it emits as source.
SOURCE_MARKERS = (b'extern "C" __global__', b"__launch_bounds__")


@dataclasses.dataclass(frozen=True)
class Entry:
    kind: str  # "cubin" or "ptx"
    arch: str  # "sm_90a"
    size: int


@dataclasses.dataclass(frozen=True)
class Report:
    entries: tuple[Entry, ...]
    cuda_source: bool  # CUDA C kernels embedded as text

    @property
    def archs(self) -> tuple[str, ...]:
        return tuple(sorted({e.arch for e in self.entries if e.kind == "cubin"}))

    def summary(self) -> dict:
        return {
            "fatbins": [dataclasses.asdict(e) for e in self.entries],
            "cubin_archs": list(self.archs),
            "cuda_source": self.cuda_source,
        }


def scan(data: bytes) -> Report:
    """Every fatbin entry in ``data`` (an exported library's bytes), and whether CUDA source is there."""
    entries: list[Entry] = []
    pos = data.find(_MAGIC_BYTES)
    while pos != -1:
        end = _parse(data, pos, entries)
        pos = data.find(_MAGIC_BYTES, end if end > pos else pos + 4)
    source = any(marker in data for marker in SOURCE_MARKERS)
    return Report(tuple(entries), source)


def _parse(data: bytes, start: int, out: list[Entry]) -> int:
    """Parse one fatbin at ``start`` into ``out``; return its end (``start`` if it is not one)."""
    if start + 16 > len(data):
        return start
    _, version, header_size, size = struct.unpack_from("<IHHQ", data, start)
    end = start + header_size + size
    if version != 1 or header_size != 16 or end > len(data):
        return start  # four bytes that happen to look like the magic
    found: list[Entry] = []
    pos = start + header_size
    while pos + 48 <= end:
        kind, _, ehs, psize = struct.unpack_from("<HHIQ", data, pos)
        if kind not in _KINDS or ehs < 48 or pos + ehs + psize > end:
            return start
        (sm,) = struct.unpack_from("<I", data, pos + 28)
        (flags,) = struct.unpack_from("<Q", data, pos + 40)
        arch = f"sm_{sm}" + ("a" if flags & _ARCH_SPECIFIC else "")
        found.append(Entry(_KINDS[kind], arch, psize))
        pos += ehs + psize
    out.extend(found)
    return end


def problems(report: Report, arch: str) -> list[str]:
    """Why a library with this report must not ship for ``arch``; empty when it may."""
    out = []
    if report.cuda_source:
        out.append("embeds CUDA source (TVM could not compile the kernels at build time)")
    if arch not in report.archs:
        have = ", ".join(report.archs) or "none"
        out.append(f"holds no {arch} cubin in a fatbin (cubins found: {have})")
    return out
