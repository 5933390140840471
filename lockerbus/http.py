"""aiohttp routes: the events API, health, readiness, metrics and stats.

Handlers speak the same typed errors as the socket side; the JSON error body
and the status code come from :class:`~lockerbus.errors.LockerbusError`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .auth import STATS_ROLES, Principal, TokenVerifier, bearer_token
from .bus import EventBus
from .commands import CommandService
from .errors import (
    BadRequestError,
    ForbiddenError,
    LockerbusError,
    PayloadTooLargeError,
    StoreUnavailableError,
)
from .events import NAMESPACES
from .filters import parse_filter_json
from .limits import RoleLimits
from .log import access_logger
from .metrics import Metrics
from .reads import read_events
from .responses import error_response, json_response
from .service import loads_exact, parse_since
from .store import EventStore

MAX_PAGE: Final = 1000
#: Events in one ``POST /api/events/batch`` (contract §12); more is 413.
MAX_BATCH: Final = 1000
READY_SECONDS: Final = 2.0  # /readyz answers within this, whatever the store does
DEFAULT_PAGE: Final = 50

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn typed errors into contract bodies; never leak a traceback."""
    try:
        return await handler(request)
    except LockerbusError as exc:
        return error_response(exc)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        return _routing_error(request, exc)
    except web.HTTPException:
        raise
    except Exception:
        access_logger.exception("%s %s failed", request.method, request.path)
        return json_response(
            {"error": {"code": "internal_error", "message": "internal error"}}, status=500
        )


def _routing_error(
    request: web.Request, exc: web.HTTPNotFound | web.HTTPMethodNotAllowed
) -> web.Response:
    """No such route, or not with this method: the contract's error body, not plain text."""
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        response = json_response(
            {
                "error": {
                    "code": "method_not_allowed",
                    "message": f"{request.method} is not allowed on {request.path[:200]} "
                    f"(allowed: {allowed})",
                }
            },
            status=405,
        )
        response.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        return response
    return json_response(
        {"error": {"code": "not_found", "message": f"no route {request.path[:200]}"}}, status=404
    )


async def server_header(request: web.Request, response: web.StreamResponse) -> None:
    """Name the product only: no Python or aiohttp version for scanners to match."""
    response.headers["Server"] = "lockerbus"


class HttpApi:
    """The HTTP routes of contract §7, bound to one server's collaborators."""

    def __init__(
        self,
        *,
        verifier: TokenVerifier,
        bus: EventBus,
        store: EventStore,
        metrics: Metrics,
        commands: CommandService,
        limits: RoleLimits,
        max_event_bytes: int,
        stats: Callable[[], Awaitable[dict[str, Any]]],
        problem: Callable[[], str | None] | None = None,
    ) -> None:
        #: besides the store: why this instance is not ready (the cluster relay's)
        self.problem = problem or (lambda: None)
        self.verifier = verifier
        self.bus = bus
        self.store = store
        self.metrics = metrics
        self.commands = commands
        self.limits = limits
        self.max_body = max_event_bytes + 4096
        self._stats = stats

    def add_routes(self, app: web.Application) -> None:
        """Register the routes on ``app``."""
        app.on_response_prepare.append(server_header)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics_text)
        app.router.add_post("/api/events", self.post_event)
        app.router.add_post("/api/events/batch", self.post_batch)
        app.router.add_get("/api/events", self.get_events)
        app.router.add_get("/api/stats", self.get_stats)
        app.router.add_post("/api/commands", self.post_command)

    def principal(self, request: web.Request) -> Principal:
        """The caller of a request, from ``Authorization: Bearer <jwt>``."""
        return self.verifier.verify(bearer_token(request.headers.get("Authorization")))

    async def healthz(self, request: web.Request) -> web.Response:
        """200 while the process serves; no dependency is consulted."""
        return json_response({"status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        """200 when the store takes a write and nothing else is wrong, else 503 with the
        reason; answered within READY_SECONDS even when Redis is cut off."""
        reason = await self._store_problem() or self.problem()
        if reason is not None:
            return json_response({"status": "unavailable", "reason": reason}, status=503)
        return json_response({"status": "ready"})

    async def _store_problem(self) -> str | None:
        check = asyncio.ensure_future(self.store.check())
        done, _ = await asyncio.wait({check}, timeout=READY_SECONDS)
        if not done:  # not wait_for: it would wait for the cancelled call to give up
            check.cancel()
            check.add_done_callback(_consume)
            return f"the store did not answer within {READY_SECONDS:g} s"
        try:
            check.result()
        except StoreUnavailableError as exc:
            return exc.message
        return None

    async def post_event(self, request: web.Request) -> web.Response:
        """Publish one event: 201 with its envelope, or the contract's error."""
        principal = self.principal(request)
        payload = await self._json_body(request)
        published = await self.bus.publish_request(
            payload, principal=principal, bucket=self.limits.bucket(principal.sub, principal.role)
        )
        if published.duplicate:  # contract §12: the stored event, nothing stored again
            return json_response({"event": published.event, "duplicate": True})
        return json_response(published.event, status=201)

    async def post_batch(self, request: web.Request) -> web.Response:
        """Publish up to MAX_BATCH events in one request: 200 with each item's answer."""
        principal = self.principal(request)
        payload = await self._json_body(request, self.max_body * MAX_BATCH)
        items = payload.get("events") if isinstance(payload, dict) else None
        if not isinstance(items, list) or set(payload) - {"events"}:
            raise BadRequestError("a batch is an object {events: [{type, data, room?, id?}, ...]}")
        if len(items) > MAX_BATCH:
            raise PayloadTooLargeError(
                f"a batch holds at most {MAX_BATCH} events, not {len(items)}"
            )
        outcomes = await self.bus.publish_batch(
            items, principal=principal, bucket=self.limits.bucket(principal.sub, principal.role)
        )
        return json_response(
            {
                "results": [
                    {"ok": False, "error": o.to_wire()}
                    if isinstance(o, LockerbusError)
                    else o.ack()
                    for o in outcomes
                ]
            }
        )

    async def post_command(self, request: web.Request) -> web.Response:
        """Run a command at a kiosk: 201 with the command_applied envelope."""
        principal = self.principal(request)
        payload = await self._json_body(request)
        bucket = self.limits.bucket(principal.sub, principal.role)
        return json_response(await self.commands.execute(principal, payload, bucket), status=201)

    async def _json_body(self, request: web.Request, limit: int | None = None) -> Any:
        limit = limit or self.max_body
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLargeError(f"request body is over {limit} bytes")
        return loads_exact(await _read_body(request, limit))

    async def get_events(self, request: web.Request) -> web.Response:
        """Page through a namespace's history, oldest first, within the caller's scope."""
        principal = self.principal(request)
        query = request.query
        namespace = query.get("namespace", "")
        if namespace not in NAMESPACES:
            raise BadRequestError(f"namespace must be one of {', '.join(NAMESPACES)}")
        after_seq = _int_param(query, "after_seq", 0, minimum=0)
        limit = _int_param(query, "limit", DEFAULT_PAGE, minimum=1)
        if limit > MAX_PAGE:
            raise BadRequestError(f"limit must be at most {MAX_PAGE}")
        since = None
        if "since" in query:
            since = parse_since(query["since"], "since")
        client_filter = parse_filter_json(query["filter"]) if "filter" in query else None
        return json_response(
            await read_events(
                self.store,
                principal,
                namespace,
                after_seq=after_seq,
                since=since,
                limit=limit,
                client_filter=client_filter,
            )
        )

    async def get_stats(self, request: web.Request) -> web.Response:
        """Connections, latency percentiles, store figures and error counts."""
        principal = self.principal(request)
        if principal.role not in STATS_ROLES:
            raise ForbiddenError(f"role {principal.role} may not read stats")
        return json_response(await self._stats())

    async def metrics_text(self, request: web.Request) -> web.Response:
        """Prometheus text exposition."""
        return await metrics_response(self.metrics, self.store)


async def metrics_response(metrics: Metrics, store: EventStore) -> web.Response:
    """The Prometheus text, with the store's figures copied in first (main or metrics port)."""
    try:
        stats = await store.stats()
    except StoreUnavailableError:
        pass  # the last figures stay; /readyz says why
    else:
        metrics.store_events.set(stats.events)
        metrics.evictions.values = dict(stats.evictions)
    return web.Response(
        body=generate_latest(metrics.registry),
        headers={"Content-Type": CONTENT_TYPE_LATEST},
    )


async def _read_body(request: web.Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise PayloadTooLargeError(f"request body is over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _int_param(query: Any, name: str, default: int, *, minimum: int) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequestError(f"{name} must be an integer, got {raw[:32]!r}") from None
    if value < minimum:
        raise BadRequestError(f"{name} must be >= {minimum}")
    return value


def _consume(task: asyncio.Future[None]) -> None:
    """Retrieve a given-up check's outcome, so asyncio does not log it as never retrieved."""
    with contextlib.suppress(BaseException):
        task.result()
