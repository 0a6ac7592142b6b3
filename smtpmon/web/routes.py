"""The routes: one table of functions `(exporter, request) -> Answer`, dispatched alike by
both transports (smtpmon.web.server): the hub session that serves plain `/probe` requests and
the thread that serves everything else."""

from __future__ import annotations

from http import HTTPStatus
from typing import Callable, Protocol

from smtpmon.config.load import Config
from smtpmon.dns import MxResolver
from smtpmon.domains.policy import PolicyChecker
from smtpmon.exposition.metrics import CONTENT_TYPE, metrics_chunks
from smtpmon.exposition.domains import DomainStore, domain_chunks
from smtpmon.exposition.state import ExporterState
from smtpmon.exposition.store import ResultStore
from smtpmon.smtp import transcript
from smtpmon.web import landing
from smtpmon.web.probe import answer_probe
from smtpmon.web.wire import HTML, TEXT, Answer, BadRequest, Request, single_parameters


class Exporter(Protocol):
    """What the HTTP side needs from the daemon."""

    store: ResultStore
    probe_store: ResultStore  # bounded; counts /probe results per (target, module)
    state: ExporterState
    domain_store: DomainStore  # the scheduled mail domains
    domain_probe_store: DomainStore  # bounded; /probe?domain= results per (domain, module)

    @property
    def config(self) -> Config: ...

    @property
    def ready(self) -> bool: ...

    @property
    def resolver(self) -> MxResolver:
        """The mail-domain resolver (and its answer cache) of the running configuration."""

    @property
    def policy(self) -> PolicyChecker:
        """The mail-domain TLS policy checker (DANE, MTA-STS caches) of the running configuration."""

    def reload(self) -> list[str]:
        """Load the configuration file again; the errors, empty on success."""


def metrics(exporter: Exporter, request: Request) -> Answer:
    domains = exporter.domain_store
    page = metrics_chunks(exporter.store.rows() + domains.address_rows(), exporter.state,
                          domain_chunks(domains.domain_rows()))
    return Answer(HTTPStatus.OK, page, CONTENT_TYPE)


def show_transcript(exporter: Exporter, request: Request) -> Answer:
    params = single_parameters(request.query)
    target, module_name = params.get("target"), params.get("module")
    if not target or not module_name:
        raise BadRequest("parameters 'target' and 'module' are required")
    result = exporter.store.latest(target, module_name)
    if result is None:
        return Answer(HTTPStatus.NOT_FOUND, "no probe result for this target and module yet\n")
    return Answer(HTTPStatus.OK, transcript.render(result), TEXT)


def landing_page(exporter: Exporter, request: Request) -> Answer:
    page = landing.render(exporter.config, exporter.store.snapshot(counts=False),
                          ready=exporter.ready)
    return Answer(HTTPStatus.OK, page, HTML)


def healthy(exporter: Exporter, request: Request) -> Answer:
    return Answer(HTTPStatus.OK, "Healthy\n")


def ready(exporter: Exporter, request: Request) -> Answer:
    if exporter.ready:
        return Answer(HTTPStatus.OK, "Ready\n")
    return Answer(HTTPStatus.SERVICE_UNAVAILABLE, "Not ready\n")


def reload(exporter: Exporter, request: Request) -> Answer:
    errors = exporter.reload()
    if errors:
        lines = "".join(f"  {error}\n" for error in errors)
        # 400, not 500: the file is the bad input; the old configuration keeps running.
        return Answer(HTTPStatus.BAD_REQUEST,
                      f"reload failed; the previous configuration keeps running:\n{lines}")
    return Answer(HTTPStatus.OK, "configuration reloaded\n")


Route = Callable[[Exporter, Request], Answer]

# path -> (route, the methods it accepts)
ROUTES: dict[str, tuple[Route, tuple[str, ...]]] = {
    "/": (landing_page, ("GET", "HEAD")),
    "/metrics": (metrics, ("GET", "HEAD")),
    "/probe": (answer_probe, ("GET",)),
    "/transcript": (show_transcript, ("GET", "HEAD")),
    "/-/healthy": (healthy, ("GET", "HEAD")),
    "/-/ready": (ready, ("GET", "HEAD")),
    "/-/reload": (reload, ("POST",)),
}


def dispatch(exporter: Exporter, request: Request) -> Answer:
    """The route's answer; 404 for an unknown path, 405 for a method it does not accept.
    Raises what the route raises (see wire.error_answer)."""
    route = ROUTES.get(request.path)
    if route is None:
        return Answer(HTTPStatus.NOT_FOUND, f"not found: {request.path}\n")
    answer, methods = route
    if request.method not in methods:
        return Answer(HTTPStatus.METHOD_NOT_ALLOWED, f"{request.path} accepts {', '.join(methods)}\n",
                      headers={"Allow": ", ".join(methods)})
    return answer(exporter, request)
