"""services/worker/upstream.py SSEParser: incremental Server-Sent Events parsing."""

from __future__ import annotations

from services.worker.upstream import SSEParser


def parse_all(pieces: list[bytes], flush: bool = True) -> list[tuple[str, bytes]]:
    p = SSEParser()
    out: list[tuple[str, bytes]] = []
    for piece in pieces:
        out.extend(p.feed(piece))
    if flush:
        out.extend(p.flush())
    return out


def splits(stream: bytes):
    """The stream cut once at every position, cut twice at every pair (short streams), and fed byte by byte."""
    yield [stream]
    for i in range(1, len(stream)):
        yield [stream[:i], stream[i:]]
    if len(stream) <= 64:
        for i in range(1, len(stream)):
            for j in range(i + 1, len(stream)):
                yield [stream[:i], stream[i:j], stream[j:]]
    yield [bytes([b]) for b in stream]


LF_STREAM = (
    b": keep-alive comment\n\n"
    b'data: {"a":1}\n\n'
    b'event: message_start\ndata: {"type":"message_start"}\n\n'
    b"data: line one\ndata: line two\ndata:line three\n\n"
    b"data: [DONE]\n\n"
)
LF_EVENTS = [
    ("", b'{"a":1}'),
    ("message_start", b'{"type":"message_start"}'),
    ("", b"line one\nline two\nline three"),
    ("", b"[DONE]"),
]


def test_simple_events():
    assert parse_all([LF_STREAM]) == LF_EVENTS


def test_every_split_point_lf():
    for pieces in splits(LF_STREAM):
        assert parse_all(pieces) == LF_EVENTS, pieces


def test_every_pair_of_split_points_lf():
    stream = b"event: e\ndata: a\ndata: b\n\n: c\n\ndata: [DONE]\n\n"
    for pieces in splits(stream):
        assert parse_all(pieces) == [("e", b"a\nb"), ("", b"[DONE]")], pieces


def test_events_come_out_as_soon_as_complete():
    p = SSEParser()
    assert p.feed(b"data: a\n") == []
    assert p.feed(b"\ndata: b") == [("", b"a")]
    assert p.feed(b"\n\n") == [("", b"b")]


def test_crlf_line_endings():
    stream = b'data: {"x":1}\r\n\r\nevent: ping\r\ndata: {}\r\n\r\n'
    assert parse_all([stream]) == [("", b'{"x":1}'), ("ping", b"{}")]


def test_cr_line_endings():
    stream = b"data: a\r\rdata: b\rdata: c\r\r"
    assert parse_all([stream]) == [("", b"a"), ("", b"b\nc")]


def test_every_split_point_crlf_single_line_events():
    stream = b'data: {"x":1}\r\n\r\ndata: [DONE]\r\n\r\n'
    for pieces in splits(stream):
        assert parse_all(pieces) == [("", b'{"x":1}'), ("", b"[DONE]")], pieces


def test_every_split_point_crlf_multi_line_event():
    stream = b"event: x\r\ndata: a\r\ndata: b\r\n\r\n"
    for pieces in splits(stream):
        assert parse_all(pieces) == [("x", b"a\nb")], pieces


def test_comments_are_ignored():
    assert parse_all([b": ping\n\n:another\n\n"]) == []
    assert parse_all([b": hi\ndata: x\n: mid\n\n"]) == [("", b"x")]


def test_event_name_and_unknown_fields():
    stream = b"id: 7\nevent: content_block_delta\nretry: 100\ndata: {}\n\n"
    assert parse_all([stream]) == [("content_block_delta", b"{}")]


def test_only_one_leading_space_is_stripped():
    assert parse_all([b"data:  two spaces\n\n"]) == [("", b" two spaces")]
    assert parse_all([b"data:nospace\n\n"]) == [("", b"nospace")]


def test_data_field_without_colon_is_empty_line():
    assert parse_all([b"data: a\ndata\ndata: b\n\n"]) == [("", b"a\n\nb")]


def test_multibyte_utf8_split():
    text = "data: héllo → 世界\n\n".encode()
    for pieces in splits(text):
        assert parse_all(pieces) == [("", "héllo → 世界".encode())]


def test_incomplete_trailing_event_dropped_by_flush():
    p = SSEParser()
    assert p.feed(b"data: complete\n\ndata: partial") == [("", b"complete")]
    assert p.flush() == []
    # the partial event is gone: nothing of it leaks into what follows
    assert p.feed(b"\n\ndata: next\n\n") == [("", b"next")]


def test_flush_drops_event_missing_only_its_blank_line():
    p = SSEParser()
    assert p.feed(b"data: almost\n") == []
    assert p.flush() == []


def test_many_events_in_one_feed():
    stream = b"".join(b"data: %d\n\n" % i for i in range(200))
    assert parse_all([stream]) == [("", str(i).encode()) for i in range(200)]


def test_an_unending_line_costs_linear_time():
    """100 MB of one line in 64 KB reads: linear (the old parser re-copied the buffer per read)."""
    import time

    p = SSEParser(limit=200 * 1024 * 1024)
    piece = b"x" * 65536
    t0 = time.process_time()
    p.feed(b"data: ")
    for _ in range(1600):
        assert p.feed(piece) == []
    elapsed = time.process_time() - t0
    assert elapsed < 2.0, elapsed  # quadratic took ~20 s here; linear takes well under 1 s
    assert p.feed(b"\n\n") == [("", b"x" * 65536 * 1600)]


def test_an_event_beyond_the_bound_raises():
    import pytest

    from services.worker.upstream import EventTooLarge

    p = SSEParser(limit=1000)
    p.feed(b"data: " + b"y" * 500)
    with pytest.raises(EventTooLarge):
        p.feed(b"y" * 600)


def test_the_bound_counts_only_the_partial_event():
    p = SSEParser(limit=100)
    stream = b"".join(b'data: {"i":%d}\n\n' % i for i in range(1000))
    assert len(parse_all([stream[i : i + 37] for i in range(0, len(stream), 37)])) == 1000
    assert len(p.feed(stream)) == 1000
