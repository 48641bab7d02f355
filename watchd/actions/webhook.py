"""The webhook action: its schema, the JSON body of an event, Standard Webhooks signing, and
one HTTP attempt.

Retrying, spooling and ordering belong to ``watchd.outbox``; this module only knows how to
build a delivery and how one attempt at it ended.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, ClassVar

import urllib3
import urllib3.util
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)

from watchd import __version__
from watchd.actions.kind import ActionKind
from watchd.core.actions import ActionContext, Outcome, retry_delay
from watchd.core.document import event_document, text
from watchd.core.job import Job
from watchd.schema.fields import Duration, Strict, Timeout, absolute
from watchd.security.secrets import SigningKey, read_signing_key

USER_AGENT = f"watchd/{__version__}"
MAX_RETRY_AFTER = 3600.0  # seconds: the longest wait a server's Retry-After obtains
RESPONSE_KEPT = 512  # bytes of a failed response's body kept for the log


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Headers a webhook sets itself; a rule's `headers` may not replace them.
_OWN_HEADERS = frozenset({"content-type", "content-length", "host", "user-agent", "webhook-id",
                          "webhook-timestamp", "webhook-signature", "transfer-encoding"})


def _http_url(url: str) -> str:
    try:
        parsed = urllib3.util.parse_url(url)
    except ValueError as error:
        raise ValueError(f"invalid URL {url!r}: {error}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"a webhook URL must be http:// or https:// with a host, not {url!r}")
    if parsed.auth:
        raise ValueError("a webhook URL must not hold credentials (they would be logged): "
                         "send them in headers, e.g. Authorization")
    return url


def _header_name(name: str) -> str:
    if not _HEADER_NAME.match(name):
        raise ValueError(f"invalid HTTP header name {name!r}")
    if name.lower() in _OWN_HEADERS:
        raise ValueError(f"header {name!r} is set by watchd itself")
    return name


def _header_value(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError("an HTTP header value cannot hold CR, LF or NUL")
    return value


def _signing_key(path: object) -> SigningKey:
    if not isinstance(path, str):
        raise ValueError("secret_file must be a path")
    return read_signing_key(absolute(path))


class WebhookModel(Strict):
    """POST the event as JSON, signed per Standard Webhooks when a secret is given."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    url: Annotated[str, AfterValidator(_http_url)] = Field(
        description="where to POST: `http://` or `https://`, with no credentials in it (send "
        "them in `headers`); TLS is always verified, redirects are not followed")
    secret_file: Annotated[
        SigningKey, BeforeValidator(_signing_key), WithJsonSchema({"type": "string"}),
        PlainSerializer(lambda key: key.path, return_type=str),
    ] | None = Field(default=None, description="a file of the key that signs each request per "
                     "Standard Webhooks (base64, optionally prefixed `whsec_`): a regular file, "
                     "not a symlink, that group and others may neither read nor write; unset: "
                     "unsigned")
    timeout: Timeout = Field(default=10.0, description="how long one attempt may take")
    retries: int = Field(default=5, ge=0, le=100, description="further attempts after the "
                         "first, on no answer, a timeout, 429 or 5xx; never on another 4xx or "
                         "a 3xx")
    backoff: Duration = Field(default=1.0, description="the wait before the first retry, "
                              "doubled for each next one, plus up to a quarter (jitter), at most "
                              "10 minutes (there, 8 to 10); "
                              "never shorter than the server's `Retry-After`")
    headers: dict[Annotated[str, AfterValidator(_header_name)],
                  Annotated[str, AfterValidator(_header_value)]] = Field(
        default_factory=dict, description="HTTP headers added to the request; those watchd sets "
        "itself (`Content-Type`, `User-Agent`, `webhook-*`, ...) cannot be replaced")


class WebhookAction(Strict):
    webhook: WebhookModel = Field(description="POST the event as JSON to a URL, signed per "
                                  "Standard Webhooks when a secret is given")


@dataclass(frozen=True, slots=True)
class Webhook:
    """A webhook action ready to deliver: where, how signed, how hard to try."""

    url: str
    key: SigningKey | None
    timeout: float
    retries: int
    backoff: float
    headers: tuple[tuple[str, str], ...]

    kind: ClassVar[str] = "webhook"
    keeps_order: ClassVar[bool] = True

    @classmethod
    def compile(cls, model: WebhookAction) -> Webhook:
        spec = model.webhook
        return cls(spec.url, spec.secret_file, spec.timeout, spec.retries, spec.backoff,
                   tuple(spec.headers.items()))

    def describe(self, values: Mapping[str, bytes]) -> str:
        # The key file's path only: its contents are never shown.
        signed = f", signed with the key in {self.key.path}" if self.key else ", unsigned"
        return f"{self.kind}: POST {self.url}{signed}"

    def room_for_paths(self, job: Job) -> int | None:
        return None  # a batch's paths are in a body, not an argv

    def perform(self, context: ActionContext, job: Job, step: int,
                info: os.stat_result | None) -> Outcome:
        # Accepted for delivery (kept, queued) is success here; the outbox logs the rest.
        return Outcome.HANDED_ON if context.deliver(job, step) else Outcome.FAILED


def new_delivery_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def body(job: Job, delivery_id: str) -> bytes:
    """The event (a batch's events, under ``batch``) as the JSON that is POSTed: the same
    bytes on every attempt."""
    document: dict[str, object] = {"id": delivery_id, "rule": job.rule.name}
    if job.batch:
        document.update(count=job.count, caught_up=job.caught_up,
                        batch=[event_document(event) for event in job.batch])
    else:
        document.update(event_document(job.event))
    document.update(
        root=text(job.root.path),
        time=datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        host=machine_name())
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()


class _MachineName:
    """The machine's name, looked up again once a second at most: a system call for every
    body had the worker wait for the interpreter lock after each (half its time on a webhook
    rule's job, in a burst)."""

    REFRESH = 1.0  # seconds

    def __init__(self) -> None:
        self._name = ""
        self._looked_at = -self.REFRESH

    def now(self) -> str:
        now = time.monotonic()
        if now - self._looked_at >= self.REFRESH:
            self._name, self._looked_at = socket.gethostname(), now
        return self._name


machine_name = _MachineName().now  # as ``hostname`` says it, at most a second late


def signature(key: bytes, delivery_id: str, timestamp: int, payload: bytes) -> str:
    """``v1,<base64 HMAC-SHA256>`` over ``id.timestamp.body``, as Standard Webhooks specifies."""
    signed = f"{delivery_id}.{timestamp}.".encode() + payload
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def headers(webhook: Webhook, delivery_id: str, payload: bytes) -> dict[str, str]:
    sent = dict(webhook.headers)
    sent.update({"Content-Type": "application/json", "User-Agent": USER_AGENT})
    if webhook.key is not None:
        timestamp = int(time.time())
        sent.update({
            "webhook-id": delivery_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(webhook.key.key, delivery_id, timestamp, payload),
        })
    return sent


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one POST ended: ``status`` is the HTTP status, None if no response came."""

    status: int | None
    error: str | None
    retry_after: float | None
    duration: float

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        """Worth another try: no answer, 429, or a server error. Not 3xx, not other 4xx."""
        if self.status is None:
            return self.error is not None and not self.error.startswith("TLS")
        return self.status == 429 or self.status >= 500

    def describe(self) -> str:
        if self.status is None:
            return str(self.error)
        detail = f": {self.error}" if self.error else ""
        return f"HTTP {self.status}{detail}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a webhook's requests go: the connections to its URL's host (kept alive, of its
    own: each outbox sends to one URL, in order) and the request's target (path and query),
    made once rather than for every request."""

    url: str
    connections: urllib3.HTTPConnectionPool
    target: str

    @classmethod
    def of(cls, url: str) -> Endpoint:
        return cls(url, urllib3.connection_from_url(url, maxsize=2, retries=False),
                   urllib3.util.parse_url(url).request_uri)


def attempt(endpoint: Endpoint, webhook: Webhook, delivery_id: str, payload: bytes) -> Attempt:
    """POST once to ``endpoint``, ``webhook.url``'s; redirects are not followed and urllib3
    does not retry on its own."""
    started = time.monotonic()
    try:
        response = endpoint.connections.urlopen(
            "POST", endpoint.target, body=payload, headers=headers(webhook, delivery_id, payload),
            timeout=urllib3.Timeout(connect=webhook.timeout, read=webhook.timeout),
            retries=False, redirect=False, preload_content=False, assert_same_host=False,
        )
    except urllib3.exceptions.HTTPError as error:
        return Attempt(None, _failure(error, webhook.timeout), None, time.monotonic() - started)
    try:
        kept = response.read(RESPONSE_KEPT + 1)
    except urllib3.exceptions.HTTPError as error:
        response.close()
        return Attempt(None, f"reading the response: {_reason(error)}", None,
                       time.monotonic() - started)
    # A body read to its end frees the connection for reuse; a longer one is not worth reading.
    if len(kept) > RESPONSE_KEPT:
        response.close()
    else:
        response.release_conn()
    status = response.status
    detail = None
    if not 200 <= status < 300:
        detail = _response_detail(status, response.headers.get("Location"), kept)
    return Attempt(status, detail, _retry_after(response.headers.get("Retry-After")),
                   time.monotonic() - started)


def _failure(error: urllib3.exceptions.HTTPError, timeout: float) -> str:
    # NewConnectionError is a ConnectTimeoutError to urllib3: test for it first.
    if isinstance(error, urllib3.exceptions.SSLError):
        return f"TLS: {getattr(error, 'reason', None) or error}"
    if isinstance(error, urllib3.exceptions.NewConnectionError):
        return f"cannot connect: {_reason(error)}"
    if isinstance(error, urllib3.exceptions.TimeoutError):
        return f"timed out after {timeout:g}s"
    return f"no response: {_reason(error)}"


def _reason(error: Exception) -> str:
    reason = getattr(error, "reason", None) or error
    return str(reason).split(": ", 1)[-1] if isinstance(reason, Exception) else str(reason)


def _response_detail(status: int, location: str | None, kept: bytes) -> str:
    if 300 <= status < 400:
        return f"redirect to {location!r} not followed" if location else "redirect not followed"
    return text(kept[:RESPONSE_KEPT]).strip()[:200]


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date; None if absent."""
    if not value:
        return None
    if value.strip().isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    remaining: float = when.timestamp() - time.time()
    return min(max(0.0, remaining), MAX_RETRY_AFTER)


def delivery_delay(webhook: Webhook, retry: int, retry_after: float | None) -> float:
    """Seconds before retry number ``retry`` of a delivery: never sooner than the server's
    Retry-After."""
    return max(retry_delay(webhook.backoff, retry), retry_after or 0.0)


KIND = ActionKind("webhook", WebhookAction, Webhook.compile,
                  "a 'webhook' (a mapping with a url)")
