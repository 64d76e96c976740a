"""Every NATS subject, queue group, header, stream and bucket name, in one place.

Services build subjects only through these constants and builders.
"""

from __future__ import annotations

# -- request path -----------------------------------------------------------------
ROUTE_PREFIX = "sw.route."
ROUTE_ALL = "sw.route.*"
ROUTER_QUEUE = "router"

EXEC_PREFIX = "sw.exec."

# Reply inboxes: one wildcard subscription per ingress process.
INBOX_PREFIX = "_SW."

# -- events and state ---------------------------------------------------------------
ATTEMPT_EVENTS = "sw.events.attempt"
WORKER_HEARTBEAT = "sw.workers.heartbeat"
INGRESS_PRESENCE = "sw.ingress.presence"
# Workers answer this with their catalog (models, capabilities) for the ingress.
CATALOG_REQUEST = "sw.catalog.get"
CATALOG_UPDATE = "sw.catalog.update"

USAGE_PREFIX = "sw.usage."
USAGE_ALL = "sw.usage.>"
USAGE_STREAM = "SW_USAGE"
LEDGER_DURABLE = "ledger"

KV_HEALTH = "sw_health"
KV_SPEND = "sw_spend"
KV_PROVIDERS = "sw_providers"
KV_KEYS = "sw_keys"

HEALTH_QUEUE = "health"

OPS = ("chat", "completions", "embeddings")


def route(op: str) -> str:
    return ROUTE_PREFIX + op


def exec_subject(provider_id: str) -> str:
    return EXEC_PREFIX + provider_id


def worker_queue(provider_id: str) -> str:
    return "worker." + provider_id


def inbox_root(process_id: str) -> str:
    return INBOX_PREFIX + process_id


def inbox_wildcard(process_id: str) -> str:
    return INBOX_PREFIX + process_id + ".*"


def usage_subject(provider_id: str) -> str:
    """Where a worker publishes the usage records of a provider's attempts (one a message)."""
    return USAGE_PREFIX + provider_id


def inbox_process(inbox: str) -> str:
    """The ingress process a reply inbox (``_SW.<process>.<token>``) belongs to."""
    return inbox[len(INBOX_PREFIX) :].partition(".")[0]


def valid_token(token: str) -> bool:
    """May ``token`` be used as one subject token (provider ids)?"""
    return bool(token) and not any(c in token for c in " \t\r\n.*>")


class H:
    """NATS header names Switchman uses (routing data travels in the Envelope)."""

    TRACEPARENT = "traceparent"
    TRACESTATE = "tracestate"
    # The NATS server's status header (503 = no responders).
    STATUS = "Status"
    # JetStream de-duplication id.
    MSG_ID = "Nats-Msg-Id"


# The ingress abandons a request (client gone, timeout); every worker listens and
# the one holding that reply inbox (the payload) cancels its upstream call.
CANCEL = "sw.cancel"
