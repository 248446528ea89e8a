"""Message payloads: ``net`` 3 and the Appendix A byte vectors, plus every bad input."""
from __future__ import annotations

import pytest

from dilithion.net.protocol import (CPP_USER_AGENT, MAINNET_MAGIC, MAX_INV_SIZE, MESSAGE_TYPES,
                                    PROTOCOL_VERSION,
                                    TESTNET_MAGIC, Address, Inv, InvType, MsgAddr, MsgBlock,
                                    MsgGetaddr, MsgGetblocks, MsgGetdata, MsgInv, MsgNotfound, MsgPing, MsgPong, MsgTx,
                                    MsgVerack, MsgVersion, MessageType, decode_payload,
                                    get_message_command)
from dilithion.net.serialize import NetMessage, SerializationError, ser_compact_size
from dilithion.primitives.block import Block, BlockHeader, Uint256
from dilithion.primitives.transaction import OutPoint, Transaction, TxIn, TxOut

APPENDIX_TX = bytes.fromhex(
    "01000000" "01" + "11" * 32 + "00000000" "02aabb" "ffffffff"
    "01" "00f2052a01000000" "03010203" "00000000")


def _h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def appendix_tx() -> Transaction:
    return Transaction(1, [TxIn(OutPoint(b"\x11" * 32, 0), b"\xaa\xbb", 0xFFFFFFFF)],
                       [TxOut(5_000_000_000, b"\x01\x02\x03")], 0)


# -- Appendix A ----------------------------------------------------------------------
def test_verack_and_getaddr_vectors():
    assert MsgVerack().to_net_message(MAINNET_MAGIC).serialize() == _h(
        "024171d1 76657261636b000000000000 00000000 a1292c11")
    assert MsgVerack().to_net_message(TESTNET_MAGIC).serialize() == _h(
        "fabfb5da 76657261636b000000000000 00000000 a1292c11")
    assert MsgGetaddr().to_net_message(MAINNET_MAGIC).serialize() == _h(
        "024171d1 676574616464720000000000 00000000 a1292c11")


def test_ping_and_pong_vectors():
    raw = MsgPing(0x0123456789ABCDEF).to_net_message(MAINNET_MAGIC).serialize()
    assert raw == _h("024171d1 70696e670000000000000000 08000000 85043ecf efcdab8967452301")
    pong = MsgPong(0x0123456789ABCDEF).to_net_message(MAINNET_MAGIC).serialize()
    assert pong == raw.replace(b"ping", b"pong", 1)
    assert MsgPing.deserialize(raw[24:]) == MsgPing(0x0123456789ABCDEF)


def test_version_vector_as_the_cpp_sends_it():
    msg = MsgVersion(timestamp=1762560000, user_agent=CPP_USER_AGENT)
    raw = msg.to_net_message(MAINNET_MAGIC).serialize()
    assert raw == _h("024171d1 76657273696f6e0000000000 33000000 a9334206"
                     "71110100 0100000000000000 00880e6900000000 0000000000000000"
                     "11 2f44696c697468696f6e3a302e312e302f 00000000 01")
    assert len(raw) == 75
    assert MsgVersion.deserialize(raw[24:]) == msg


def test_version_relay_byte_any_non_zero_is_true():
    payload = bytearray(MsgVersion(user_agent=b"").serialize())
    payload[-1] = 0x7F
    assert MsgVersion.deserialize(bytes(payload)).relay is True
    payload[-1] = 0
    assert MsgVersion.deserialize(bytes(payload)).relay is False


def test_version_trailing_bytes_are_ignored_like_the_cpp():
    payload = MsgVersion(user_agent=CPP_USER_AGENT).serialize()
    assert MsgVersion.deserialize(payload + b"extra").user_agent == CPP_USER_AGENT


def test_inv_vector():
    msg = MsgInv([Inv(InvType.MSG_BLOCK_INV, bytes(range(32)))])
    raw = msg.to_net_message(MAINNET_MAGIC).serialize()
    assert raw == _h("024171d1 696e76000000000000000000 25000000 50411da4 01 02000000"
                     "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
    decoded = MsgInv.deserialize(raw[24:])
    assert decoded == msg
    assert isinstance(decoded.inv[0].hash, Uint256)
    assert decoded.inv[0].hash.get_hex().startswith("1f1e1d1c") and decoded.inv[0].to_string().startswith("block ")


def test_getdata_has_the_inv_layout_with_its_own_command():
    items = [Inv(1, b"\x01" * 32), Inv(2, b"\x02" * 32)]
    assert MsgGetdata(items).serialize() == MsgInv(items).serialize()
    assert MsgGetdata(items).to_net_message(TESTNET_MAGIC).command == "getdata"


def test_addr_vector_port_is_little_endian():
    """``net D-31``: 18444 = 0x480C goes out as ``0c 48``."""
    a = Address.from_ipv4("134.122.4.164", 18444, time=1762560000)
    payload = MsgAddr([a]).serialize()
    assert payload == _h("01 00880e69 0100000000000000 00000000000000000000ffff867a04a4 0c48")
    back = MsgAddr.deserialize(payload).addrs[0]
    assert back == a and back.to_string_ip() == "134.122.4.164" and back.is_ipv4()
    assert back.to_string() == "134.122.4.164:18444"


def test_address_text_forms():
    assert Address().to_string_ip() == "[0000::0000]"
    assert Address(ip=bytes(15) + b"\x01").to_string_ip() == "[0000::0001]"
    with pytest.raises(ValueError):
        Address(ip=bytes(4))
    with pytest.raises(ValueError):
        Address(port=70000)
    with pytest.raises(ValueError):
        Address.from_ipv4("1.2.3", 1)


def test_tx_vector_and_txid():
    tx = appendix_tx()
    assert tx.serialize() == APPENDIX_TX and len(APPENDIX_TX) == 65
    assert tx.txid.hex() == "a9fbdbaeddb3294fa9ec1e7fd454617d68c450a07baede5c976946739ed304a9"
    assert Uint256(tx.txid).get_hex() == (
        "a904d39e734669975cdeae7ba050c4687d6154d47f1eeca94f29b3ddaedbfba9")
    raw = MsgTx(tx).to_net_message(TESTNET_MAGIC).serialize()
    assert raw[:24] == _h("fabfb5da 747800000000000000000000 41000000 b0ab5e9c")
    assert MsgTx.deserialize(raw[24:]).tx == tx


def test_block_vector():
    header = BlockHeader(1, Uint256(bytes(range(32))), Uint256(bytes(range(255, 223, -1))),
                         1762560000, 0x1F060000, 42)
    block = Block(header, APPENDIX_TX)
    payload = block.serialize()
    assert payload == (_h("01000000") + bytes(range(32)) + bytes(range(255, 223, -1))
                       + _h("00880e69 0000061f 2a000000 41") + APPENDIX_TX)
    assert len(payload) == 146
    raw = MsgBlock(block).to_net_message(TESTNET_MAGIC).serialize()
    assert raw[:24] == _h("fabfb5da 626c6f636b00000000000000 92000000 9c5e9795")
    assert MsgBlock.deserialize(payload).block == block


# -- dispatch ------------------------------------------------------------------------
def test_decode_payload_dispatch_and_unknown_commands():
    assert set(MESSAGE_TYPES) == {"version", "verack", "ping", "pong", "getaddr", "addr", "inv",
                                  "getdata", "notfound", "block", "tx", "getblocks"}
    # notfound: the inv layout (Bitcoin); sent to Python peers only (net D-15).
    nf = MsgNotfound([Inv(InvType.MSG_BLOCK_INV, bytes(range(32)))])
    assert nf.serialize() == b"\x01" + (2).to_bytes(4, "little") + bytes(range(32))
    assert decode_payload("notfound", nf.serialize()) == nf
    assert decode_payload("ping", bytes(8)) == MsgPing(0)
    assert decode_payload("verack", b"ignored") == MsgVerack()
    for unknown in ("getheaders", "headers", "mempool", "reject", "nonsense"):
        assert decode_payload(unknown, b"\x00" * 5) is None


def test_getblocks_layout_and_limits():
    """Bitcoin's layout (the C++ names the command but never handles it)."""
    locator = [bytes([i]) * 32 for i in (3, 2, 1)]
    payload = MsgGetblocks(locator).serialize()
    assert payload == (PROTOCOL_VERSION.to_bytes(4, "little") + b"\x03" + b"".join(locator)
                       + bytes(32))
    assert MsgGetblocks.deserialize(payload) == MsgGetblocks(locator)
    too_many = PROTOCOL_VERSION.to_bytes(4, "little") + b"\x66" + bytes(32 * 103)
    with pytest.raises(SerializationError, match="locator count 102 .* exceeds limit 101"):
        MsgGetblocks.deserialize(too_many)
    with pytest.raises(SerializationError):
        MsgGetblocks.deserialize(payload[:-1])


def test_message_type_names_match_the_command_classes():
    names = [get_message_command(t) for t in MessageType]
    assert names[:10] == [cls.command for cls in (MsgVersion, MsgVerack, MsgPing, MsgPong, MsgGetaddr,
                                                  MsgAddr, MsgInv, MsgGetdata, MsgBlock, MsgTx)]
    assert names[10:] == ["getheaders", "headers", "getblocks", "mempool", "reject"]
    assert get_message_command(99) == "unknown"


def test_message_equality_is_by_type_and_fields():
    assert MsgVerack() != MsgGetaddr()
    assert MsgPing(1) != MsgPong(1)
    assert MsgPing(1) == MsgPing(1)


# -- bad input, one per decoder ---------------------------------------------------------
def test_ping_and_pong_need_eight_bytes():
    for cls in (MsgPing, MsgPong):
        with pytest.raises(SerializationError, match=f"wanted 8 bytes for {cls.command} nonce at offset 0, 7 remain"):
            cls.deserialize(bytes(7))
    assert MsgPing.deserialize(bytes(8) + b"extra").nonce == 0      # extra ignored, as the C++


@pytest.mark.parametrize("cut", [0, 3, 11, 19, 27, 28, 40, 45, 49])
def test_truncated_version(cut):
    payload = MsgVersion(user_agent=CPP_USER_AGENT).serialize()
    with pytest.raises(SerializationError, match="read past end"):
        MsgVersion.deserialize(payload[:cut])


def test_version_user_agent_over_one_mebibyte():
    prefix = MsgVersion().serialize()[:28]
    with pytest.raises(SerializationError, match="user agent length 1048577 at offset 28 exceeds limit"):
        MsgVersion.deserialize(prefix + ser_compact_size(1024 * 1024 + 1) + b"a" * 100)


def test_version_user_agent_longer_than_payload():
    prefix = MsgVersion().serialize()[:28]
    with pytest.raises(SerializationError, match="wanted 200 bytes for user agent at offset 29, 10 remain"):
        MsgVersion.deserialize(prefix + ser_compact_size(200) + b"a" * 10)


@pytest.mark.parametrize("cls", [MsgInv, MsgGetdata])
def test_inv_and_getdata_bad_counts(cls):
    with pytest.raises(SerializationError, match=f"{cls.command} count 50001 at offset 0 exceeds limit 50000"):
        cls.deserialize(ser_compact_size(MAX_INV_SIZE + 1))
    with pytest.raises(SerializationError, match=f"{cls.command} count 1152921504606846976 at offset 0 exceeds"):
        cls.deserialize(b"\xff" + (2**60).to_bytes(8, "little"))
    with pytest.raises(SerializationError, match=f"{cls.command} count 3 at offset 0 needs at least 108 bytes, 72 remain"):
        cls.deserialize(b"\x03" + bytes(72))
    with pytest.raises(SerializationError, match=f"unexpected trailing bytes after {cls.command} payload"):
        cls.deserialize(b"\x01" + bytes(36) + b"\x00")
    with pytest.raises(SerializationError, match="read past end"):
        cls.deserialize(b"")


def test_inv_at_the_limit_is_accepted():
    payload = ser_compact_size(MAX_INV_SIZE) + (b"\x02\x00\x00\x00" + bytes(32)) * MAX_INV_SIZE
    assert len(MsgInv.deserialize(payload).inv) == MAX_INV_SIZE


def test_addr_bad_counts():
    with pytest.raises(SerializationError, match="addr count 1001 at offset 0 exceeds limit 1000"):
        MsgAddr.deserialize(ser_compact_size(1_001))
    with pytest.raises(SerializationError, match="addr count 2 at offset 0 needs at least 60 bytes, 30 remain"):
        MsgAddr.deserialize(b"\x02" + bytes(30))
    with pytest.raises(SerializationError, match="trailing bytes after addr payload"):
        MsgAddr.deserialize(b"\x00\x00")


def test_tx_message_bad_input():
    with pytest.raises(SerializationError, match="trailing bytes after tx payload"):
        MsgTx.deserialize(APPENDIX_TX + b"\x00")
    with pytest.raises(SerializationError, match="read past end"):
        MsgTx.deserialize(APPENDIX_TX[:-1])


def test_block_message_bad_input_and_lenient_trailer():
    payload = Block(BlockHeader(bits=0x1F060000), b"vtx").serialize()
    assert MsgBlock.deserialize(payload + b"junk").block.vtx == b"vtx"     # as the C++
    with pytest.raises(SerializationError, match="wanted 4 bytes for header nNonce at offset 76"):
        MsgBlock.deserialize(payload[:78])
    with pytest.raises(SerializationError, match="wanted 3 bytes for block vtx at offset 81, 2 remain"):
        MsgBlock.deserialize(payload[:-1])


def test_net_message_from_message_is_valid():
    msg = MsgInv([Inv(2, bytes(32))]).to_net_message(TESTNET_MAGIC)
    assert isinstance(msg, NetMessage)
    msg.check(TESTNET_MAGIC)                    # raises on any broken rule


def test_inv_construction_checks():
    with pytest.raises(ValueError):
        Inv(2, b"short")
    with pytest.raises(ValueError):
        Inv(-1, bytes(32))
    assert Inv(1, bytes(32)) < Inv(2, bytes(32))
