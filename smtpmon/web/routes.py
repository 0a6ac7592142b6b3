"""The routes: one table of functions `(exporter, request) -> Answer`, dispatched alike by
both transports (smtpmon.web.server): the hub session that serves plain `/probe` requests and
the thread that serves everything else."""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Protocol

from smtpmon import __version__
from smtpmon.config.load import Config
from smtpmon.dns import MxResolver
from smtpmon.domains.policy import PolicyChecker
from smtpmon.exposition.domains import DomainStore, domain_chunks
from smtpmon.exposition.metrics import CONTENT_TYPE, metrics_chunks
from smtpmon.exposition.state import ExporterState
from smtpmon.exposition.store import ResultStore
from smtpmon.smtp import transcript
from smtpmon.web import docs, landing, triage
from smtpmon.web.inert import show_controls
from smtpmon.web.probe import answer_probe
from smtpmon.web.wire import HTML, TEXT, Answer, BadRequest, Request, single_parameters


class Exporter(Protocol):
    """What the HTTP side needs from the daemon."""

    store: ResultStore
    probe_store: ResultStore  # bounded; counts /probe results per (target, module)
    state: ExporterState
    telemetry_path: str  # where /metrics is served (--web.telemetry-path)
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

    def maillog_metrics(self) -> bytes:
        """The mail log's families (smtpmon.exposition.maillog); empty when none is read."""


def metrics(exporter: Exporter, request: Request) -> Answer:
    domains = exporter.domain_store
    page = metrics_chunks(exporter.store.rows() + domains.address_rows(), exporter.state,
                          domain_chunks(domains.domain_rows()),
                          maillog=exporter.maillog_metrics())
    return Answer(HTTPStatus.OK, page, CONTENT_TYPE)


def show_transcript(exporter: Exporter, request: Request) -> Answer:
    params = single_parameters(request.query)
    target, module_name = params.get("target"), params.get("module")
    if not target or not module_name:
        raise BadRequest("parameters 'target' and 'module' are required")
    result = exporter.store.latest(target, module_name)
    if result is None:
        return Answer(HTTPStatus.NOT_FOUND, "no probe result for this target and module yet\n")
    # A server's bytes, read with curl in a terminal: its escape sequences stay text.
    return Answer(HTTPStatus.OK, show_controls(transcript.render(result)), TEXT)


def landing_page(exporter: Exporter, request: Request) -> Answer:
    try:
        query = triage.parse_query(single_parameters(request.query))
    except triage.QueryError as error:
        raise BadRequest(str(error)) from None
    return Answer(HTTPStatus.OK, landing.render(exporter, exporter.state.status(), query), HTML)


def target_page(exporter: Exporter, request: Request) -> Answer:
    params = single_parameters(request.query)
    target, module_name = params.get("target"), params.get("module")
    if not target or not module_name:
        raise BadRequest("parameters 'target' and 'module' are required")
    page = landing.render_target(exporter, target, module_name)
    if page is None:
        return Answer(HTTPStatus.NOT_FOUND, "no such target and module\n")
    return Answer(HTTPStatus.OK, page, HTML)


def domain_page(exporter: Exporter, request: Request) -> Answer:
    """A mail domain's page: /domain?domain=NAME&module=NAME (NAME as the `domain` label)."""
    params = single_parameters(request.query)
    name, module_name = params.get("domain"), params.get("module")
    if not name or not module_name:
        raise BadRequest("parameters 'domain' and 'module' are required")
    page = landing.render_domain(exporter, name, module_name)
    if page is None:
        return Answer(HTTPStatus.NOT_FOUND, "no such domain and module\n")
    return Answer(HTTPStatus.OK, page, HTML)


def docs_page(exporter: Exporter, request: Request) -> Answer:
    """docs/*.md as HTML (smtpmon.web.docs): the index, or ?page=NAME."""
    name = single_parameters(request.query).get("page")
    directory = docs.docs_directory()
    if name is None:
        return Answer(HTTPStatus.OK, docs.render_index(directory, __version__), HTML)
    page = docs.render_page(name, directory, __version__)
    if page is None:
        return Answer(HTTPStatus.NOT_FOUND, "no such page; /docs lists them\n")
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

METRICS_PATH = "/metrics"

# path -> (route, the methods it accepts); the exposition is served at the exporter's
# telemetry_path, METRICS_PATH unless --web.telemetry-path says otherwise.
ROUTES: dict[str, tuple[Route, tuple[str, ...]]] = {
    "/": (landing_page, ("GET", "HEAD")),
    METRICS_PATH: (metrics, ("GET", "HEAD")),
    "/probe": (answer_probe, ("GET",)),
    "/transcript": (show_transcript, ("GET", "HEAD")),
    "/target": (target_page, ("GET", "HEAD")),
    "/domain": (domain_page, ("GET", "HEAD")),
    "/docs": (docs_page, ("GET", "HEAD")),
    "/-/healthy": (healthy, ("GET", "HEAD")),
    "/-/ready": (ready, ("GET", "HEAD")),
    "/-/reload": (reload, ("POST",)),
}


def dispatch(exporter: Exporter, request: Request) -> Answer:
    """The route's answer; 404 for an unknown path, 405 for a method it does not accept.
    Raises what the route raises (see wire.error_answer)."""
    if request.path == exporter.telemetry_path:
        route = ROUTES[METRICS_PATH]
    elif request.path == METRICS_PATH:
        route = None  # moved by --web.telemetry-path
    else:
        route = ROUTES.get(request.path)
    if route is None:
        return Answer(HTTPStatus.NOT_FOUND, f"not found: {request.path}\n")
    answer, methods = route
    if request.method not in methods:
        return Answer(HTTPStatus.METHOD_NOT_ALLOWED, f"{request.path} accepts {', '.join(methods)}\n",
                      headers={"Allow": ", ".join(methods)})
    return answer(exporter, request)


def check_telemetry_path(path: str) -> str:
    """`--web.telemetry-path` as given, or ValueError saying why it cannot be served."""
    if not path.startswith("/") or any(char in path for char in "?# ") or not path.isprintable():
        raise ValueError(f"invalid --web.telemetry-path {path!r}: want a path such as /metrics")
    if path != METRICS_PATH and path in ROUTES:
        raise ValueError(f"invalid --web.telemetry-path {path!r}: smtpmon serves something else there")
    return path
