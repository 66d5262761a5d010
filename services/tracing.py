"""Traces: W3C trace context carried end to end, OpenTelemetry spans exported over OTLP.

The context travels whether or not spans are exported: a client's `traceparent` and
`tracestate` go from the router's HTTP edge into the job (`JobRequest.trace`) and the NATS
headers of every job, and from the worker to the runtime as HTTP headers, so a runtime
that traces (vLLM, a proxy) joins the client's trace. With `telemetry.otlp_endpoint` set,
each process also records spans and exports them (OTLP over HTTP, protobuf, in a
background thread): the router's request, each attempt, the worker's job, its admission
and its runtime call. The context then sent on names the sending span, so the two
processes' spans link into one trace; a request that came without a context starts one.

Off (the default) costs what passing a dict costs: spans are one shared object whose
methods do nothing, no ids are drawn, the OpenTelemetry SDK is not even imported.

    tracing = Tracing(settings.telemetry, service="inferbus-worker")
    with tracing.span("job", parent=msg.headers) as span:   # a carrier, a Span, or None
        span.set("node", "gpu-a")
        headers = span.headers()                             # {"traceparent": ...}
    with runtime_trace(span.headers()):                      # what runtime calls send
        ...
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span as OtelSpan
    from opentelemetry.trace import Tracer

__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "Span",
    "TelemetrySettings",
    "Tracing",
    "carrier_of",
    "runtime_trace",
    "runtime_trace_headers",
]

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

Kind = Literal["server", "client", "consumer", "producer", "internal"]
Carrier = Mapping[str, str]


class TelemetrySettings(BaseModel):
    """`telemetry:` on the router and the worker."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # An OTLP/HTTP receiver (Jaeger, Tempo, an OpenTelemetry Collector): its base URL,
    # e.g. http://127.0.0.1:4318 (spans go to <url>/v1/traces). None: no spans.
    otlp_endpoint: str | None = Field(default=None, pattern=r"^https?://[^\s]+$")
    service_name: str | None = None  # default: inferbus-router / inferbus-worker
    sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)  # of traces this process starts
    export_delay_ms: int = Field(default=1000, gt=0)  # how long spans wait to be batched


def carrier_of(headers: Mapping[str, str] | None) -> dict[str, str] | None:
    """The trace context among `headers` (any mapping with lower- or mixed-case names)."""
    if not headers:
        return None
    found: dict[str, str] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered in (TRACEPARENT, TRACESTATE) and value:
            found[lowered] = value
    return found if TRACEPARENT in found else None


# --- the context a runtime call sends ------------------------------------------------------

_RUNTIME_TRACE: ContextVar[Carrier | None] = ContextVar("inferbus_runtime_trace", default=None)


def runtime_trace_headers() -> Carrier | None:
    """The trace headers runtime calls made now should send (None: none)."""
    return _RUNTIME_TRACE.get()


@contextlib.contextmanager
def runtime_trace(headers: Carrier | None) -> Iterator[None]:
    """Runtime calls made inside the block send `headers` (services/runtimes/http.py)."""
    if not headers:
        yield
        return
    token = _RUNTIME_TRACE.set(headers)
    try:
        yield
    finally:
        _RUNTIME_TRACE.reset(token)


# --- spans -------------------------------------------------------------------------------

# With tracing off, the context a block passes on (the caller's, as it came).
_PASSED_ON: ContextVar[Carrier | None] = ContextVar("inferbus_passed_on", default=None)


class Span:
    """A span that records nothing: it only passes the context it was given on."""

    __slots__ = ("_carrier", "_token")

    def __init__(self, carrier: Carrier | None) -> None:
        self._carrier = carrier
        self._token: Any = None

    def set(self, key: str, value: str | int | float | bool | None) -> None:
        """Name a fact about the span (an attribute); None values are left out."""

    def error(self, code: str) -> None:
        """Mark the span failed with an error code."""

    def headers(self) -> dict[str, str]:
        """The trace context to send on from inside this span."""
        return dict(self._carrier) if self._carrier else {}

    def end(self) -> None:
        """End the span (once; later calls do nothing)."""

    def __enter__(self) -> Self:
        if self._carrier:
            self._token = _PASSED_ON.set(self._carrier)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _PASSED_ON.reset(self._token)
            self._token = None
        self.end()


class _RecordingSpan(Span):
    """An OpenTelemetry span; entering it makes it the current one."""

    __slots__ = ("_ended", "_otel")

    def __init__(self, otel: OtelSpan) -> None:
        super().__init__(None)
        self._otel = otel
        self._ended = False

    def set(self, key: str, value: str | int | float | bool | None) -> None:
        if value is not None:
            self._otel.set_attribute(key, value)

    def error(self, code: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self._otel.set_attribute("error.type", code)
        self._otel.set_status(Status(StatusCode.ERROR, code))

    def headers(self) -> dict[str, str]:
        from opentelemetry.trace import set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, set_span_in_context(self._otel))
        return carrier

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self._otel.end()

    def __enter__(self) -> Self:
        from opentelemetry import context
        from opentelemetry.trace import set_span_in_context

        self._token = context.attach(set_span_in_context(self._otel))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        from opentelemetry import context

        if self._token is not None:
            with contextlib.suppress(ValueError):  # exited in another context than entered
                context.detach(self._token)
            self._token = None
        self.end()


class Tracing:
    """One process's tracer: spans exported when `otlp_endpoint` is set, else pass-through."""

    def __init__(
        self,
        settings: TelemetrySettings | None,
        *,
        service: str,
        attributes: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings or TelemetrySettings()
        self.enabled = self.settings.otlp_endpoint is not None
        self._provider: TracerProvider | None = None
        self._tracer: Tracer | None = None
        if self.enabled:
            self._provider, self._tracer = _exporting(
                self.settings, self.settings.service_name or service, attributes or {}
            )

    def span(
        self,
        name: str,
        *,
        parent: Span | Carrier | None = None,
        kind: Kind = "internal",
    ) -> Span:
        """A new span, child of `parent` (a span, or headers carrying a context) or of the
        current span; not current until entered (`with`), ended on exit or by `end()`."""
        if self._tracer is None:
            if isinstance(parent, Span):
                return Span(parent._carrier)
            carried = carrier_of(parent) if parent is not None else None
            return Span(carried or _PASSED_ON.get())
        return _RecordingSpan(self._start(name, parent, kind))

    def past(self, name: str, seconds: float, attributes: Mapping[str, str | float]) -> None:
        """Record a span that ends now and lasted `seconds` (a wait measured by someone
        else, such as the admission line's), as a child of the current span."""
        if self._tracer is None:
            return
        import time

        from opentelemetry import context as otel_context

        end_ns = time.time_ns()
        start_ns = end_ns - int(seconds * 1e9)
        span = self._tracer.start_span(
            name,
            context=otel_context.get_current(),
            start_time=start_ns,
            attributes=dict(attributes),
        )
        span.end(end_time=end_ns)

    def _start(self, name: str, parent: Span | Carrier | None, kind: Kind) -> OtelSpan:
        from opentelemetry import context as otel_context
        from opentelemetry.trace import SpanKind, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        assert self._tracer is not None
        if isinstance(parent, _RecordingSpan):
            context = set_span_in_context(parent._otel)
        elif isinstance(parent, Span) or parent is None:
            context = otel_context.get_current()
        else:
            carried = carrier_of(parent)
            # A context from outside starts from an empty one: never a stale current span.
            context = TraceContextTextMapPropagator().extract(carried or {}, otel_context.Context())
        return self._tracer.start_span(name, context=context, kind=SpanKind[kind.upper()])

    def flush(self, timeout_s: float = 5.0) -> None:
        if self._provider is not None:
            self._provider.force_flush(int(timeout_s * 1000))

    def shutdown(self) -> None:
        """Export what is left and stop the exporter (idempotent)."""
        if self._provider is not None:
            provider, self._provider, self._tracer = self._provider, None, None
            provider.shutdown()


def _exporting(
    settings: TelemetrySettings, service: str, attributes: Mapping[str, str]
) -> tuple[TracerProvider, Tracer]:
    """A tracer provider of this process's own (never the global one: a test may run a
    router and workers in one process, each its own service) exporting over OTLP/HTTP."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    assert settings.otlp_endpoint is not None
    endpoint = settings.otlp_endpoint.rstrip("/")
    if not endpoint.endswith("/v1/traces"):
        endpoint += "/v1/traces"
    resource = Resource.create({"service.name": service, **attributes})
    provider = TracerProvider(
        resource=resource,
        sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
        shutdown_on_exit=False,
    )
    exporter = OTLPSpanExporter(endpoint=endpoint, timeout=5)
    provider.add_span_processor(
        BatchSpanProcessor(exporter, schedule_delay_millis=settings.export_delay_ms)
    )
    return provider, provider.get_tracer("inferbus")
