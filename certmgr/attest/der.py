"""A small bounded DER reader (ITU-T X.690) for what peers send: certificates, extensions.

Pure. Lenient only where real RA-TLS producers slip and it does not matter (non-minimal
long-form lengths); everything malformed raises :class:`certmgr.errors.RaTlsError`.
Bounded: lengths of at most 4 bytes, no indefinite lengths, at most 256 elements per
constructed value, OID arcs of at most 64 bits.
"""

from __future__ import annotations

from dataclasses import dataclass

from certmgr.errors import RaTlsError

__all__ = ["TLV", "children", "decode_oid", "expect", "read_tlv", "single"]

MAX_ELEMENTS = 256


@dataclass(frozen=True, slots=True)
class TLV:
    tag: int
    value: bytes
    raw: bytes  # the whole encoding, header included


def read_tlv(buf: bytes, pos: int) -> tuple[TLV, int]:
    """The TLV at ``pos`` and the position after it."""
    if pos + 2 > len(buf):
        raise RaTlsError("DER: truncated header")
    tag = buf[pos]
    if tag & 0x1F == 0x1F:
        raise RaTlsError("DER: multi-byte tags are not used in certificates")
    first = buf[pos + 1]
    hdr = 2
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise RaTlsError("DER: indefinite length")
    else:
        n = first & 0x7F
        if n > 4 or pos + 2 + n > len(buf):
            raise RaTlsError("DER: bad length")
        # Non-minimal long-form lengths (BER) are tolerated: some RA-TLS libraries emit them.
        length = int.from_bytes(buf[pos + 2 : pos + 2 + n], "big")
        hdr += n
    end = pos + hdr + length
    if end > len(buf):
        raise RaTlsError("DER: value runs past its container")
    return TLV(tag, buf[pos + hdr : end], buf[pos:end]), end


def children(value: bytes) -> list[TLV]:
    """The elements of a constructed value's content."""
    out: list[TLV] = []
    pos = 0
    while pos < len(value):
        tlv, pos = read_tlv(value, pos)
        out.append(tlv)
        if len(out) > MAX_ELEMENTS:
            raise RaTlsError("DER: too many elements")
    return out


def expect(tlv: TLV, tag: int, what: str) -> TLV:
    if tlv.tag != tag:
        raise RaTlsError(f"DER: {what}: expected tag {tag:#x}, got {tlv.tag:#x}")
    return tlv


def single(value: bytes, what: str) -> TLV:
    """``value`` as exactly one TLV, with nothing after it."""
    tlv, end = read_tlv(value, 0)
    if end != len(value):
        raise RaTlsError(f"DER: {what}: {len(value) - end} bytes after the value")
    return tlv


def decode_oid(value: bytes) -> str:
    """The dotted form of an OBJECT IDENTIFIER's content bytes."""
    if not value or value[-1] & 0x80:
        raise RaTlsError("DER: malformed OBJECT IDENTIFIER")
    arcs: list[int] = []
    n = 0
    for b in value:
        n = (n << 7) | (b & 0x7F)
        if n.bit_length() > 64:
            raise RaTlsError("DER: OBJECT IDENTIFIER arc too large")
        if not b & 0x80:
            arcs.append(n)
            n = 0
    first = arcs[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(a) for a in head + arcs[1:])
