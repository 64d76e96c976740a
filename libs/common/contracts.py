"""Messages that cross the bus.

Frames on a reply inbox carry a 6-byte header — kind (1 byte), attempt (1 byte),
sequence number (4 bytes, big-endian) — followed by the payload, so the ingress
dispatches without parsing NATS headers or JSON for the common (chunk) case:

=====  =============================================================================
kind   payload
=====  =============================================================================
``A``  :class:`Ack` (JSON) — a worker took the request
``M``  :class:`Moved` (JSON) — an attempt failed before its first byte; the next
       candidate of the plan has it now
``C``  OpenAI stream chunks, ready-to-send one-line JSON, newline-separated (what
       one upstream read produced travels as one frame)
``R``  the complete OpenAI response body (non-stream)
``P``  a piece of a payload too large for one message; the frame of the payload's
       own kind (``C`` or ``R``) that follows carries its last piece
``D``  :class:`Done` (JSON) — the stream ended cleanly
``E``  :class:`~libs.common.errors.ErrorFrame` (JSON) — the request failed
``K``  empty — keep-alive while the upstream is silent
=====  =============================================================================

Exactly one terminal frame (``R``, ``D`` or ``E``) ends every request.

Each attempt numbers its frames from 0 (its ``A``); the router's frames (an ``E``
before any attempt) are attempt 0. A bus blip can lose messages silently, so the
ingress checks that every frame of the current attempt is the next in sequence and
fails the request on a gap or reordering — never a clean finish of a damaged answer.

Requests on ``sw.route.*`` and ``sw.exec.*`` carry their routing data in an
:class:`Envelope` in front of the client's body: ``<envelope JSON>\n<body>``.
(DESIGN.md puts it in NATS headers; nats-py spends ~25 µs encoding and ~50 µs
parsing a header block per message, measured, which alone would eat the ≤ 1 ms
budget over three hops. The envelope costs ~1 µs. The router still decodes only
the envelope and forwards the body bytes untouched. Trace context does travel in
NATS headers, when tracing is on.)
"""

from __future__ import annotations

import struct

import msgspec

from .errors import ErrorFrame


class _Msg(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    pass


class Candidate(msgspec.Struct, frozen=True, array_like=True):
    provider: str
    model: str


class Envelope(msgspec.Struct, frozen=True, array_like=True):
    """What routing needs, written by the ingress, completed by the router."""

    op: str
    model: str  # the name the client asked for
    request_id: str
    deadline_ms: int  # unix time
    stream: bool = False
    key: str | None = None
    strategy: str | None = None
    plan: list[Candidate] = []
    attempt: int = 0  # 1-based index into plan once routed
    reason: str = ""


class Ack(_Msg, frozen=True):
    provider: str
    model: str
    attempt: int
    worker: str
    reason: str = ""
    plan_size: int = 1
    beat: int = 0  # heartbeats the worker had sent: only later ones speak of this request


class Moved(_Msg, frozen=True):
    provider: str
    attempt: int
    status: int
    message: str
    next_provider: str


class Done(_Msg, frozen=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class AttemptEvent(_Msg, frozen=True):
    """One upstream attempt, for health (sw.events.attempt)."""

    request_id: str
    attempt_id: str
    provider: str
    model: str
    op: str
    status: int  # HTTP-like outcome: 200 ok, else the error status
    latency_ms: float
    ttft_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error_type: str | None = None
    stream: bool = False
    ts: float = 0.0


class UsageRecord(_Msg, frozen=True):
    """One billed upstream call: one JetStream ``SW_USAGE`` message on
    ``sw.usage.<provider>``, ``Nats-Msg-Id`` = ``attempt_id``.

    ``estimated``: some count was estimated by the gateway (the provider sent no usage,
    or the attempt ended after its first byte without one), not reported by the provider.
    """

    request_id: str
    attempt_id: str
    key: str | None
    provider: str
    model: str
    client_model: str
    op: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0
    cost_usd: float = 0.0
    status: int = 200
    ts: float = 0.0
    estimated: bool = False


class Heartbeat(_Msg, frozen=True):
    """A worker is alive (every ``liveness.BEAT_S``), with the reply inboxes it serves.

    An ingress whose request is not in ``active`` any more, though it has no terminal
    frame for it, lost that frame on the bus. A ``draining`` worker takes no new work
    (routers skip it) but is alive for the streams it is finishing.
    """

    worker: str
    providers: list[str]
    in_flight: int = 0
    active: list[str] = []
    draining: bool = False
    beat: int = 0  # numbers this worker's heartbeats (see Ack.beat)


class Presence(_Msg, frozen=True):
    """An ingress process is alive (every ``liveness.BEAT_S``): workers stop the upstream
    calls of an ingress that went silent."""

    process: str


class ModelInfo(_Msg, frozen=True):
    """A model a provider serves, with what it can do (GET /v1/models, /v1/capabilities)."""

    id: str
    provider: str
    owned_by: str
    streaming: bool = True
    tools: bool = False
    vision: bool = False
    json_mode: bool = False
    embeddings: bool = False
    chat: bool = True
    completions: bool = False
    context_window: int | None = None
    input_per_mtok: float | None = None
    output_per_mtok: float | None = None


class Extension(_Msg, frozen=True):
    provider: str
    field: str
    description: str


class Catalog(_Msg, frozen=True):
    worker: str
    models: list[ModelInfo] = []
    extensions: list[Extension] = []


# -- frames ---------------------------------------------------------------------------
ACK = ord("A")
MOVED = ord("M")
CHUNK = ord("C")
RESULT = ord("R")
DONE = ord("D")
ERROR = ord("E")
KEEPALIVE = ord("K")
PART = ord("P")

encode = msgspec.json.Encoder().encode
envelope_decoder = msgspec.json.Decoder(Envelope)
ack_decoder = msgspec.json.Decoder(Ack)
error_decoder = msgspec.json.Decoder(ErrorFrame)
# Attempt events travel in batches (one message per worker flush); usage records one a message.
attempt_batch_decoder = msgspec.json.Decoder(list[AttemptEvent])
usage_decoder = msgspec.json.Decoder(UsageRecord)
heartbeat_decoder = msgspec.json.Decoder(Heartbeat)
presence_decoder = msgspec.json.Decoder(Presence)
catalog_decoder = msgspec.json.Decoder(Catalog)

# Room kept in every request message for the routing envelope in front of the body
# (the router adds the plan): a body may use the bus's max_payload minus this.
ENVELOPE_ROOM = 64 * 1024

_HEADER = struct.Struct(">BBI")
HEADER_SIZE = _HEADER.size
header = _HEADER.pack
parse_header = _HEADER.unpack_from


def frame(kind: int, attempt: int, seq: int, payload: bytes = b"") -> bytes:
    return _HEADER.pack(kind, attempt, seq) + payload


def pack(env: Envelope, body: bytes | memoryview) -> bytes:
    """``<envelope>\n<body>``; compact JSON never contains a raw newline."""
    return b"".join((encode(env), b"\n", body))


def unpack(data: bytes) -> tuple[Envelope, memoryview]:
    """The envelope and a zero-copy view of the body; ValueError when malformed."""
    cut = data.index(b"\n")
    try:
        env = envelope_decoder.decode(data[:cut])
    except msgspec.DecodeError as e:
        raise ValueError(f"bad routing envelope: {e}") from None
    return env, memoryview(data)[cut + 1 :]


def repack(data: bytes, env: Envelope) -> bytes:
    """Replace the envelope in front of a packed request, keeping its body bytes."""
    return b"".join((encode(env), data[data.index(b"\n") :]))
