import errno

import pytest

import protocol


def test_open_round_trip():
    buf = protocol.encode_open(7, 3, "erofs,img0.1x2", b"img0.1x2", fd=12, flags=0)
    req = protocol.decode(buf)
    assert req == protocol.OpenRequest(7, 3, "erofs,img0.1x2", b"img0.1x2", 12, 0)
    assert protocol.blob_name(req.volume_key, req.cookie_key) == "img0.1x2"


def test_read_and_close_round_trip():
    assert protocol.decode(protocol.encode_read(9, 4, 1 << 20, 131072)) == protocol.ReadRequest(9, 4, 1 << 20, 131072)
    assert protocol.decode(protocol.encode_close(2, 4)) == protocol.CloseRequest(2, 4)


def test_layout_matches_uapi():
    # struct cachefiles_msg is 16 bytes; cachefiles_read adds two u64
    buf = protocol.encode_read(1, 2, 3, 4)
    assert len(buf) == 32
    assert buf[:16] == bytes([1, 0, 0, 0, 2, 0, 0, 0, 32, 0, 0, 0, 2, 0, 0, 0])
    assert protocol.CACHEFILES_IOC_READ_COMPLETE == (1 << 30) | (4 << 16) | (0x98 << 8) | 1


@pytest.mark.parametrize("bad, why", [
    (b"\0" * 8, "short message"),
    (protocol.encode_read(1, 2, 3, 4)[:-1], "header says"),
    (protocol.encode_close(1, 1)[:4] + (9).to_bytes(4, "little") + protocol.encode_close(1, 1)[8:], "unknown opcode"),
])
def test_bad_messages_are_refused(bad, why):
    with pytest.raises(protocol.ProtocolError, match=why):
        protocol.decode(bad)


def test_open_with_inconsistent_key_sizes():
    buf = bytearray(protocol.encode_open(1, 1, "erofs,x", b"x", 5))
    buf[16] += 1  # volume_key_size one too many
    with pytest.raises(protocol.ProtocolError, match="OPEN keys"):
        protocol.decode(bytes(buf))


def test_copen_commands():
    assert protocol.copen_command(5, 2244608) == b"copen 5,2244608"
    assert protocol.copen_command(5, protocol.copen_error(errno.ENOENT)) == b"copen 5,-2"
    with pytest.raises(ValueError):
        protocol.copen_command(5, -5000)


@pytest.mark.parametrize("offset, length, expected", [
    (0, 4096, (0, 4096)),
    (0, 1, (0, 4096)),
    (4095, 2, (0, 8192)),
    (131072, 131072, (131072, 131072)),
    (5000, 100, (4096, 4096)),
])
def test_aligned_span(offset, length, expected):
    assert protocol.aligned_span(offset, length) == expected
