"""DataStream, CompactSize, checksum and framing (``net`` 1-2, Appendix A)."""
from __future__ import annotations

import pytest

from dilithion.net.serialize import (MAX_MESSAGE_SIZE, MAX_STRING_LENGTH, MESSAGE_HEADER_SIZE,
                                     DataStream, MessageHeader, NetMessage, SerializationError,
                                     calculate_checksum, ser_compact_size)

MAINNET = 0xD1714102
TESTNET = 0xDAB5BFFA


# -- integers ------------------------------------------------------------------
def test_integers_are_little_endian_and_signed_ones_twos_complement():
    s = (DataStream().write_uint8(0xAB).write_uint16(0x0102).write_uint32(0x01020304)
         .write_uint64(0x0102030405060708).write_int32(-2).write_int64(-3))
    assert s.get_data().hex() == ("ab" "0201" "04030201" "0807060504030201"
                                  "feffffff" "fdffffffffffffff")
    r = DataStream(s.get_data())
    assert (r.read_uint8(), r.read_uint16(), r.read_uint32(), r.read_uint64(),
            r.read_int32(), r.read_int64()) == (0xAB, 0x0102, 0x01020304, 0x0102030405060708, -2, -3)
    assert r.eof() and r.remaining() == 0 and r.tell() == r.size() == 27


def test_int32_reads_back_the_unsigned_pattern_as_negative():
    assert DataStream(b"\xff\xff\xff\xff").read_int32() == -1
    assert DataStream(b"\xff\xff\xff\xff").read_uint32() == 0xFFFFFFFF


# -- CompactSize (Appendix A) ------------------------------------------------------
COMPACT = [(0, "00"), (252, "fc"), (253, "fdfd00"), (65535, "fdffff"), (65536, "fe00000100"),
           (4294967295, "feffffffff"), (4294967296, "ff0000000001000000"),
           (2**64 - 1, "ffffffffffffffffff")]


@pytest.mark.parametrize("value, hexed", COMPACT)
def test_compact_size_vectors(value, hexed):
    assert ser_compact_size(value).hex() == hexed
    assert DataStream().write_compact_size(value).get_data().hex() == hexed
    s = DataStream(bytes.fromhex(hexed))
    assert s.read_compact_size() == value and s.eof()


@pytest.mark.parametrize("hexed, value", [("fd0500", 5), ("fe05000000", 5), ("ff0500000000000000", 5),
                                          ("fefcff0000", 0xFFFC), ("fd0000", 0)])
def test_non_canonical_compact_size_is_accepted(hexed, value):
    """``net D-10``: the C++ decoder does no canonical check, neither do we."""
    assert DataStream(bytes.fromhex(hexed)).read_compact_size() == value


def test_compact_size_cannot_encode_out_of_range():
    with pytest.raises(ValueError):
        ser_compact_size(-1)
    with pytest.raises(ValueError):
        ser_compact_size(2**64)


@pytest.mark.parametrize("hexed", ["", "fd", "fd01", "fe010000", "ff01000000000000"])
def test_truncated_compact_size_fails_with_offset(hexed):
    with pytest.raises(SerializationError, match=r"read past end: wanted \d+ bytes for .* at offset"):
        DataStream(bytes.fromhex(hexed)).read_compact_size()


# -- reads past the end ------------------------------------------------------------
@pytest.mark.parametrize("reader, size", [("read_uint8", 1), ("read_uint16", 2), ("read_uint32", 4),
                                          ("read_int32", 4), ("read_uint64", 8), ("read_int64", 8),
                                          ("read_uint256", 32)])
def test_every_fixed_size_read_fails_one_byte_short(reader, size):
    s = DataStream(b"\x01" * (size + 2))
    s.read(3)
    with pytest.raises(SerializationError) as err:
        getattr(s, reader)("the field")
    text = str(err.value)
    assert "the field" in text and "offset 3" in text and f"wanted {size}" in text
    assert f"{size - 1} remain" in text


def test_seek_and_clear():
    s = DataStream(b"\x01\x02\x03")
    s.read_uint16()
    s.seek(1)
    assert s.read_uint8() == 2
    with pytest.raises(SerializationError, match="seek to 4 outside a 3-byte stream"):
        s.seek(4)
    s.clear()
    assert s.size() == 0 and s.tell() == 0 and s.eof()


def test_read_negative_length_is_an_error():
    with pytest.raises(SerializationError, match="negative length"):
        DataStream(b"abc").read(-1)


def test_failed_read_does_not_move_the_cursor():
    s = DataStream(b"\x01\x02")
    with pytest.raises(SerializationError):
        s.read_uint32()
    assert s.tell() == 0 and s.read_uint16() == 0x0201


# -- var bytes, strings, counts ----------------------------------------------------
def test_var_bytes_and_string_round_trip():
    s = DataStream().write_var_bytes(b"abc").write_string(b"\x00embedded\x00nul")
    r = DataStream(s.get_data())
    assert r.read_var_bytes() == b"abc"
    assert r.read_string() == b"\x00embedded\x00nul"
    r.expect_end("test")


def test_var_bytes_length_larger_than_the_data():
    with pytest.raises(SerializationError, match=r"wanted 5 bytes for script at offset 1, 3 remain"):
        DataStream(b"\x05abc").read_var_bytes("script")


def test_var_bytes_over_limit_fails_before_reading():
    with pytest.raises(SerializationError, match=r"script length 11 at offset 0 exceeds limit 10"):
        DataStream(b"\x0b" + b"x" * 11).read_var_bytes("script", limit=10)


def test_string_limit_is_one_mebibyte_inclusive():
    exactly = DataStream().write_string(b"a" * MAX_STRING_LENGTH).get_data()
    assert len(DataStream(exactly).read_string()) == MAX_STRING_LENGTH
    over = ser_compact_size(MAX_STRING_LENGTH + 1) + b"a" * (MAX_STRING_LENGTH + 1)
    with pytest.raises(SerializationError, match="user agent length 1048577 .* exceeds limit 1048576"):
        DataStream(over).read_string("user agent")


def test_huge_string_length_fails_without_allocating():
    with pytest.raises(SerializationError, match="exceeds limit"):
        DataStream(b"\xff" + b"\xff" * 8).read_string()


def test_read_count_limit_and_room():
    with pytest.raises(SerializationError, match=r"inv count 50001 at offset 0 exceeds limit 50000"):
        DataStream(ser_compact_size(50_001)).read_count(50_000, "inv count", 36)
    with pytest.raises(SerializationError, match=r"inv count 2 at offset 0 needs at least 72 bytes, 71 remain"):
        DataStream(b"\x02" + bytes(71)).read_count(50_000, "inv count", 36)
    assert DataStream(b"\x02" + bytes(72)).read_count(50_000, "inv count", 36) == 2
    with pytest.raises(ValueError):
        DataStream(b"\x00").read_count(10, "x", 0)


def test_expect_end_names_the_trailing_bytes():
    s = DataStream(b"\x01\x02\x03")
    s.read_uint8()
    with pytest.raises(SerializationError, match=r"2 unexpected trailing bytes after thing at offset 1"):
        s.expect_end("thing")


def test_write_uint256_requires_32_bytes():
    with pytest.raises(ValueError):
        DataStream().write_uint256(b"\x00" * 31)


# -- checksum and header -------------------------------------------------------------
def test_checksum_is_double_sha3():
    assert calculate_checksum(b"").hex() == "a1292c11"
    assert calculate_checksum(bytes.fromhex("efcdab8967452301")).hex() == "85043ecf"


def test_command_truncation_and_padding():
    """Appendix A: at most 11 characters, always NUL in byte 12."""
    assert MessageHeader.encode_command("abcdefghijklmnop") == b"abcdefghijk\x00"
    assert MessageHeader.encode_command("verack") == b"verack" + bytes(6)
    msg = NetMessage(MAINNET, "abcdefghijklmnop", b"")
    assert msg.command == "abcdefghijk"
    assert msg.serialize()[4:16] == b"abcdefghijk\x00"


def test_get_command_stops_at_first_nul_and_ignores_the_rest():
    """``net`` 1.3: bytes after the first NUL are not checked."""
    hdr = MessageHeader(MAINNET, b"ping\x00garbag\x00", 0, calculate_checksum(b""))
    assert hdr.get_command() == "ping"
    hdr.check(MAINNET)


def test_header_layout_and_round_trip():
    raw = bytes.fromhex("024171d1" "76657261636b000000000000" "00000000" "a1292c11")
    hdr = MessageHeader.deserialize(raw)
    assert (hdr.magic, hdr.get_command(), hdr.payload_size, hdr.checksum) == (
        MAINNET, "verack", 0, bytes.fromhex("a1292c11"))
    assert hdr.serialize() == raw
    assert hdr == MessageHeader.deserialize(raw + b"more")   # only the first 24 bytes are read


@pytest.mark.parametrize("length", [0, 1, 23])
def test_short_header_fails(length):
    with pytest.raises(SerializationError, match=f"message header needs 24 bytes, got {length}"):
        MessageHeader.deserialize(bytes(length))


def test_header_check_rules():
    ok = MessageHeader(MAINNET, MessageHeader.encode_command("ping"), 8, b"\0" * 4)
    ok.check(MAINNET)
    with pytest.raises(SerializationError, match="wrong magic 0xd1714102 .expected 0xdab5bffa"):
        ok.check(TESTNET)
    with pytest.raises(SerializationError, match="exceeds MAX_MESSAGE_SIZE"):
        MessageHeader(MAINNET, ok.command, MAX_MESSAGE_SIZE + 1, b"\0" * 4).check(MAINNET)
    MessageHeader(MAINNET, ok.command, MAX_MESSAGE_SIZE, b"\0" * 4).check(MAINNET)   # inclusive
    with pytest.raises(SerializationError, match="not NUL-terminated"):
        MessageHeader(MAINNET, b"abcdefghijkl", 0, b"\0" * 4).check(MAINNET)


def test_header_constructor_validates_field_sizes():
    with pytest.raises(ValueError):
        MessageHeader(MAINNET, b"ping", 0, b"\0" * 4)
    with pytest.raises(ValueError):
        MessageHeader(MAINNET, bytes(12), 0, b"\0" * 3)


# -- whole messages ----------------------------------------------------------------------
def test_net_message_round_trip_and_validity():
    msg = NetMessage(TESTNET, "ping", bytes.fromhex("efcdab8967452301"))
    raw = msg.serialize()
    assert len(raw) == MESSAGE_HEADER_SIZE + 8
    again = NetMessage.deserialize(raw, TESTNET)
    assert again.serialize() == raw and again.command == "ping"
    msg.check(TESTNET)
    with pytest.raises(SerializationError, match="magic"):
        msg.check(MAINNET)


def test_net_message_deserialize_errors():
    raw = NetMessage(TESTNET, "ping", b"12345678").serialize()
    with pytest.raises(SerializationError, match="'ping' message: payload is 7 bytes at offset 24 .*announces 8 .missing"):
        NetMessage.deserialize(raw[:-1], TESTNET)
    with pytest.raises(SerializationError, match="payload is 9 bytes .*trailing"):
        NetMessage.deserialize(raw + b"x", TESTNET)
    with pytest.raises(SerializationError, match="wrong magic"):
        NetMessage.deserialize(raw, MAINNET)
    corrupted = raw[:-1] + bytes([raw[-1] ^ 1])
    with pytest.raises(SerializationError, match="bad checksum for 'ping'"):
        NetMessage.deserialize(corrupted, TESTNET)
    with pytest.raises(SerializationError, match="message header needs 24 bytes"):
        NetMessage.deserialize(raw[:10], TESTNET)


def test_from_parts_check_catches_size_mismatch():
    hdr = MessageHeader(TESTNET, MessageHeader.encode_command("ping"), 8, calculate_checksum(b"x"))
    msg = NetMessage.from_parts(hdr, b"x")
    with pytest.raises(SerializationError, match="payload is 1 bytes but the header announces 8"):
        msg.check(TESTNET)
