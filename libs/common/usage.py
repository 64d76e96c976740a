"""The JetStream stream ``SW_USAGE``: where usage records are kept until the ledger has them.

One record per message on ``sw.usage.<provider>``, ``Nats-Msg-Id`` = the attempt id,
so a publish retried after a lost acknowledgement is stored once. Workers (before
they publish) and the ledger (before it consumes) both call
:func:`ensure_usage_stream`; whichever comes first creates the stream, and an
existing stream gets the configured limits (age, size, duplicate window).
"""

from __future__ import annotations

from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, StreamInfo
from nats.js.client import JetStreamContext
from nats.js.errors import BadRequestError

from . import subjects
from .config import UsageConfig


def stream_config(cfg: UsageConfig) -> StreamConfig:
    """Limits retention, oldest discarded first; the duplicate window never exceeds the age."""
    return StreamConfig(
        name=subjects.USAGE_STREAM,
        subjects=[subjects.USAGE_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=cfg.max_age_s,
        max_bytes=cfg.max_bytes,
        duplicate_window=min(cfg.duplicate_window_s, cfg.max_age_s),
    )


async def ensure_usage_stream(js: JetStreamContext, cfg: UsageConfig) -> StreamInfo:
    """Create ``SW_USAGE``, or bring an existing one to ``cfg``'s limits (idempotent)."""
    config = stream_config(cfg)
    try:
        return await js.add_stream(config)
    except BadRequestError:  # it exists with other settings: these limits win
        return await js.update_stream(config)
