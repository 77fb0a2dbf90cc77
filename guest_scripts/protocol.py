"""The cachefiles on-demand wire format (include/uapi/linux/cachefiles.h), standard library only.

Shared by the guest daemon and the host's unit tests, so the layouts are tested without a VM.
"""
from __future__ import annotations

import errno
import struct
from dataclasses import dataclass
from typing import Union

OP_OPEN = 0
OP_CLOSE = 1
OP_READ = 2
OPCODE_NAMES = {OP_OPEN: "OPEN", OP_CLOSE: "CLOSE", OP_READ: "READ"}

# _IOW(0x98, 1, int): the anon fd's "this READ is done" ioctl.
CACHEFILES_IOC_READ_COMPLETE = 0x40049801
# The kernel refuses to hand out a message into a smaller buffer (EMSGSIZE).
MAX_MSG_SIZE = 1024

_HEADER = struct.Struct("<IIII")  # msg_id, opcode, len, object_id
_OPEN = struct.Struct("<IIII")  # volume_key_size, cookie_key_size, fd, flags
_READ = struct.Struct("<QQ")  # off, len
HEADER_SIZE = _HEADER.size


class ProtocolError(ValueError):
    """A message that does not parse: the daemon logs it and carries on."""


@dataclass(frozen=True)
class OpenRequest:
    msg_id: int
    object_id: int
    volume_key: str
    cookie_key: bytes
    fd: int
    flags: int


@dataclass(frozen=True)
class ReadRequest:
    msg_id: int
    object_id: int
    offset: int
    length: int


@dataclass(frozen=True)
class CloseRequest:
    msg_id: int
    object_id: int


Request = Union[OpenRequest, ReadRequest, CloseRequest]


def decode(buf: bytes) -> Request:
    """One message as read() returned it from /dev/cachefiles."""
    if len(buf) < HEADER_SIZE:
        raise ProtocolError(f"short message: {len(buf)} bytes")
    msg_id, opcode, length, object_id = _HEADER.unpack_from(buf, 0)
    if length != len(buf):
        raise ProtocolError(f"header says {length} bytes, read returned {len(buf)}")
    body = buf[HEADER_SIZE:]
    if opcode == OP_OPEN:
        if len(body) < _OPEN.size:
            raise ProtocolError("short OPEN payload")
        vsize, csize, fd, flags = _OPEN.unpack_from(body, 0)
        keys = body[_OPEN.size:]
        if vsize + csize != len(keys):
            raise ProtocolError(f"OPEN keys: {vsize}+{csize} declared, {len(keys)} present")
        volume_key = keys[:vsize].rstrip(b"\0").decode("utf-8", "replace")
        return OpenRequest(msg_id, object_id, volume_key, keys[vsize:], fd, flags)
    if opcode == OP_READ:
        if len(body) != _READ.size:
            raise ProtocolError(f"READ payload of {len(body)} bytes")
        offset, rlen = _READ.unpack(body)
        return ReadRequest(msg_id, object_id, offset, rlen)
    if opcode == OP_CLOSE:
        return CloseRequest(msg_id, object_id)
    raise ProtocolError(f"unknown opcode {opcode}")


def encode_open(msg_id: int, object_id: int, volume_key: str, cookie_key: bytes, fd: int,
                flags: int = 0) -> bytes:
    """The kernel's side of an OPEN; used by tests and fixtures."""
    vkey = volume_key.encode() + b"\0"
    body = _OPEN.pack(len(vkey), len(cookie_key), fd, flags) + vkey + cookie_key
    return _HEADER.pack(msg_id, OP_OPEN, HEADER_SIZE + len(body), object_id) + body


def encode_read(msg_id: int, object_id: int, offset: int, length: int) -> bytes:
    return _HEADER.pack(msg_id, OP_READ, HEADER_SIZE + _READ.size, object_id) + _READ.pack(offset, length)


def encode_close(msg_id: int, object_id: int) -> bytes:
    return _HEADER.pack(msg_id, OP_CLOSE, HEADER_SIZE, object_id)


def copen_command(msg_id: int, size_or_errno: int) -> bytes:
    """`copen <id>,<size>`; a negative value fails the OPEN with that errno."""
    if size_or_errno < -4095:
        raise ValueError(f"copen error {size_or_errno} out of range")
    return f"copen {msg_id},{size_or_errno}".encode()


def copen_error(err: int = errno.ENOENT) -> int:
    return -abs(err)


def blob_name(volume_key: str, cookie_key: bytes) -> str:
    """EROFS asks for blob `cookie_key` in volume `erofs,<domain or fsid>`; the fsid is the key."""
    return cookie_key.rstrip(b"\0").decode("utf-8", "replace")


def aligned_span(offset: int, length: int, align: int = 4096) -> tuple[int, int]:
    """The O_DIRECT-aligned range that covers [offset, offset+length)."""
    start = offset - offset % align
    end = offset + length
    end += -end % align
    return start, end - start
