"""Compact frames: round trips against a session, every reject reason, and fuzzing (only PacketError)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cae_edge import wire
from cae_edge.errors import PacketError
from cae_edge.wire import Packet, PayloadKind

SID = wire.sender_id("cam1")
PAIR = b"\x01\x02\x03\x04"


def _session(seq: int = 1000, t_us: int = 5_000_000) -> Packet:
    return Packet(PAIR, SID, seq, t_us, b"x", PayloadKind.INT8, "cam1", 42)


@st.composite
def frame_pairs(draw) -> tuple[Packet, Packet]:
    """A session packet and a later frame of the same sender."""
    kind = draw(st.sampled_from(PayloadKind))
    sid = draw(st.integers(0, 0xFFFF))
    pair = draw(st.binary(min_size=4, max_size=4))
    seq0, t0 = draw(st.integers(0, wire.MASK32)), draw(st.integers(0, wire.MASK32))
    session = Packet(pair, sid, seq0, t0, b"", kind)
    seq = (seq0 + draw(st.integers(0, wire.MASK32))) & wire.MASK32
    dt = draw(st.integers(0, wire.COMPACT_MAX_T_UNITS * wire.COMPACT_TIME_UNIT_US))
    frame = Packet(pair, sid, seq, (t0 + dt) & wire.MASK32, draw(st.binary(max_size=300)), kind)
    return session, frame


@given(frame_pairs(), st.booleans(), st.booleans())
def test_round_trip(pair, check, with_id):
    session, frame = pair
    data = wire.pack_compact(frame, session, check=check, with_id=with_id)
    assert wire.is_compact(data) and not wire.is_compact(wire.pack(session))
    back = wire.expand(wire.unpack_compact(data), session)
    dt_units = ((frame.t_us - session.t_us) & wire.MASK32) // wire.COMPACT_TIME_UNIT_US
    want_t = (session.t_us + dt_units * wire.COMPACT_TIME_UNIT_US) & wire.MASK32
    assert back == dataclasses.replace(frame, t_us=want_t)
    assert 0 <= (frame.t_us - back.t_us) & wire.MASK32 < wire.COMPACT_TIME_UNIT_US


def test_overhead_within_8_bytes():
    session = _session()
    frame = Packet(PAIR, SID, 1099, 5_000_000 + 3_000_000, b"\x00" * 4)
    for check, with_id, most in ((False, False, 4), (True, False, 6), (True, True, 8)):
        data = wire.pack_compact(frame, session, check=check, with_id=with_id)
        assert len(data) - len(frame.payload) == most
    assert len(wire.pack(frame)) - 4 == wire.OVERHEAD_BYTES


@given(st.binary(max_size=200))
def test_garbage_raises_only_packet_error(data):
    try:
        wire.expand(wire.unpack_compact(data), _session())
    except PacketError as e:
        assert e.reason in {"short", "magic", "varint", "session", "crc"}


@given(frame_pairs(), st.data())
def test_corruption_is_caught_with_check(pair, data):
    session, frame = pair
    raw = bytearray(wire.pack_compact(frame, session, check=True, with_id=True))
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= data.draw(st.integers(1, 255))
    try:
        back = wire.expand(wire.unpack_compact(bytes(raw)), session)
    except PacketError:
        return
    # only a flip of the type byte's check bit (the frame no longer claims a check) gets through, and 1 in
    # 65,536 other corruptions (a 16-bit check): hypothesis' 100 draws would meet one once in 655 runs
    assert raw[0] & 1 == 0, back


def test_lost_session_and_bad_inputs():
    s1, s2 = _session(1000), _session(1001)
    frame = Packet(PAIR, SID, 1005, 5_100_000, b"abc")
    data = wire.pack_compact(frame, s1, check=False, with_id=False)
    with pytest.raises(PacketError) as e:
        wire.expand(wire.unpack_compact(data), s2)
    assert e.value.reason == "session"
    checked = wire.pack_compact(frame, s1, check=True, with_id=False)
    with pytest.raises(PacketError) as e:  # same tag (seq 1008), other session: the check tells
        wire.expand(wire.unpack_compact(checked), _session(1008 - 8, 5_000_001))
    assert e.value.reason == "crc"
    other = wire.pack_compact(frame, s1, check=False, with_id=True)
    with pytest.raises(PacketError) as e:
        wire.expand(wire.unpack_compact(other), dataclasses.replace(s1, sender_id=SID ^ 1))
    assert e.value.reason == "session"
    for bad in (b"", b"\xa0", b"\xa2\x01", b"\xa0\xff\xff\xff\xff\xff\x01", b"\xa0\x80", b"\xcaE"):
        with pytest.raises(PacketError) as e:
            wire.unpack_compact(bad)
        assert e.value.reason in {"short", "varint", "magic"}, bad
    with pytest.raises(PacketError) as e:
        wire.unpack_compact("text")  # type: ignore[arg-type]
    assert e.value.reason == "type"


def test_pack_refuses_what_the_session_cannot_carry():
    session = _session()
    for frame in (
        Packet(PAIR, SID, 1001, 4_999_000, b""),  # before the session in time
        Packet(PAIR, SID ^ 1, 1001, 5_000_000, b""),  # another sender
        Packet(b"\0\0\0\0", SID, 1001, 5_000_000, b""),  # another bundle
        Packet(PAIR, SID, 1001, 5_000_000, b"", PayloadKind.ENTROPY),  # another coding
        Packet(PAIR, SID, 1001, 5_000_000, b"", sender_name="cam1"),  # a name needs a full packet
    ):
        assert not wire.compact_fits(frame, session, 100)
        with pytest.raises(PacketError) as e:
            wire.pack_compact(frame, session, check=False, with_id=False)
        assert e.value.reason == "field"
    assert wire.compact_fits(Packet(PAIR, SID, 1100, 5_000_000, b""), session, 100)
    assert not wire.compact_fits(Packet(PAIR, SID, 1101, 5_000_000, b""), session, 100)
    assert not wire.compact_fits(Packet(PAIR, SID, 1000, 5_000_000, b""), session, 100)


def test_compact_overhead_model():
    secured = wire.compact_overhead(secured=True)
    insecure = wire.compact_overhead(secured=False)
    assert 4 <= secured < insecure <= 9
    assert wire.compact_overhead(frames=1) == wire.packet_size(0, "node", epoch=True)
