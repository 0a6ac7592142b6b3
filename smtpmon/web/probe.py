"""`/probe?target=host:port&module=name`: one probe now, answered with its metrics, as
blackbox_exporter's prober/handler.go answers it.

The target goes through the same grammar as a configured one (smtpmon.config.addresses), and
must be a configured target or match `probe_allow`: an exporter must not become a port scanner.
A module that sends a password goes only to the targets configured with it (or its own
probe_allow): anywhere else, a server would receive the password.
The probe's deadline comes from Prometheus' scrape timeout header, less an offset. Its result
is counted in the daemon's /probe store with every earlier /probe of the same target and
module (however the target is spelt: its `target` label is the normal spelling), so `rate()`
means the same as in daemon mode; `debug=true` adds the transcript.

`/probe?domain=example.org&module=mx` probes a whole mail domain in one scrape
(smtpmon.domains.probe_domain: every address of every MX host, in parallel, within the same
deadline), under `probe_allow_domains` (a module with AUTH: only for the domains configured
with it), and answers with the same series as daemon mode.
"""

from __future__ import annotations

import math
import threading
import time
from http import HTTPStatus

from smtpmon.config.addresses import normal_address, parse_address
from smtpmon.dns import parse_domain
from smtpmon.domains import probe_domain, report
from smtpmon.domains.policy import judgeable_switches
from smtpmon.exposition.domains import domain_chunks
from smtpmon.exposition.metrics import CONTENT_TYPE, render_probe, render_probe_rows
from smtpmon.logs import ThrottledWarning, get_logger
from smtpmon.smtp import transcript
from smtpmon.smtp.module import Module
from smtpmon.smtp.session import module_default_port, run_probe
from smtpmon.web.inert import show_controls
from smtpmon.web.wire import TEXT, Answer, BadRequest, Request, single_parameters

log = get_logger("http")

# Prometheus sends its scrape timeout; the probe must end a little before it so the answer still
# arrives in time (blackbox_exporter's default offset).
SCRAPE_TIMEOUT_HEADER = "X-Prometheus-Scrape-Timeout-Seconds"
SCRAPE_TIMEOUT_OFFSET_SECONDS = 0.5
MIN_PROBE_SECONDS = 0.1
MAX_TARGET_LENGTH = 300  # a 253-character host name, brackets and a port


class ProbeSlots:
    """At most `limit` /probe requests at once; beyond that, an immediate 503. At once, not
    queued: Prometheus is waiting, and each waiting /probe holds a connection (and, behind
    TLS or basic auth, its thread)."""

    def __init__(self, limit: int):
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)
        # A flood of refused requests must not become a flood of log lines.
        self._refused = ThrottledWarning(
            log, "/probe limit reached; more concurrent /probe requests get 503")

    def acquire(self, client: str) -> bool:
        if self._slots.acquire(blocking=False):
            return True
        self._refused.log(limit=self.limit, client=client)
        return False

    def release(self) -> None:
        self._slots.release()


def parse_probe_target(value: str | None) -> tuple[str, int]:
    """The `target` parameter as (host, port); BadRequest says what is wrong with it."""
    if value is None or value == "":
        raise BadRequest("missing parameter 'target' (host:port, e.g. target=mx.example.org:25)")
    if len(value) > MAX_TARGET_LENGTH:
        raise BadRequest(f"parameter 'target' is longer than {MAX_TARGET_LENGTH} characters")
    if not value.isprintable() or any(ch.isspace() for ch in value):
        raise BadRequest("parameter 'target' contains whitespace or control characters")
    try:
        return parse_address(value)
    except ValueError as error:
        raise BadRequest(f"invalid target: {error}") from None


def parse_debug(value: str | None) -> bool:
    if value is None or value in ("", "false"):
        return False
    if value == "true":
        return True
    raise BadRequest(f"parameter 'debug' must be true or false, got {value!r}")


def probe_deadline(header: str | None, module: Module, now: float) -> float:
    """The probe's absolute deadline: the scrape timeout less the offset, capped by the module."""
    seconds = module.timeout_seconds
    if header is not None:
        try:
            scrape_timeout = float(header)
        except ValueError:
            scrape_timeout = math.nan
        if not math.isfinite(scrape_timeout) or scrape_timeout <= 0:
            raise BadRequest(f"header {SCRAPE_TIMEOUT_HEADER} must be a positive number of seconds")
        seconds = min(seconds, max(scrape_timeout - SCRAPE_TIMEOUT_OFFSET_SECONDS, MIN_PROBE_SECONDS))
    return now + seconds



def module_parameter(config, params: dict) -> tuple[str, Module]:
    module_name = params.get("module")
    if not module_name:
        raise BadRequest(f"missing parameter 'module'; known: {', '.join(config.modules)}")
    module = config.modules.get(module_name)
    if module is None:
        shown = module_name[:64].encode("unicode_escape").decode("ascii")
        raise BadRequest(f"unknown module '{shown}'; known: {', '.join(config.modules)}")
    return module_name, module


def answer_probe(exporter, request: Request) -> Answer:
    """/probe: one probe now, on the request's hub session when it has one (else blocking
    this thread). `exporter` is a smtpmon.web.routes.Exporter."""
    params = single_parameters(request.query)
    if "domain" in params:
        return answer_domain_probe(exporter, request, params)
    host, port = parse_probe_target(params.get("target"))
    # The label and the /probe store's key: one entry however the target is spelt.
    target = normal_address(host, port)
    config = exporter.config
    module_name, module = module_parameter(config, params)
    debug = parse_debug(params.get("debug"))
    refusal = config.probe_refusal(host, port, module_name)
    if refusal is not None:
        raise BadRequest(refusal, HTTPStatus.FORBIDDEN)
    deadline = probe_deadline(request.headers.get(SCRAPE_TIMEOUT_HEADER), module, time.monotonic())
    slots = request.probe_slots
    if not slots.acquire(request.client):
        return Answer(HTTPStatus.SERVICE_UNAVAILABLE,
                      f"too many concurrent probes (limit {slots.limit}); try again later\n")
    exporter.state.probe_started()
    try:
        result = run_probe(target, host, port, module, deadline=deadline,
                           module_name=module_name, hub=request.hub)
    finally:
        exporter.state.probe_finished()
        slots.release()
    # A failure at info, a success at debug: Prometheus asks for every target every
    # scrape, and a line per answer would cost more than the probe's own work.
    (log.debug if result.success else log.info)(
        "probe via /probe", target=target, module=module_name, success=int(result.success),
        reason=result.reason, client=request.client)
    # Counted with every /probe of the same target and module before, as daemon mode counts.
    metrics = render_probe(exporter.probe_store.record_on_demand(result))
    if debug:
        # A server's bytes, read with curl in a terminal: its escape sequences stay text.
        text = show_controls(transcript.render(result)).rstrip("\n")
        body = f"{text}\n\nMetrics that would have been returned:\n".encode() + metrics
        return Answer(HTTPStatus.OK, body, TEXT)
    return Answer(HTTPStatus.OK, metrics, CONTENT_TYPE)


def answer_domain_probe(exporter, request: Request, params: dict) -> Answer:
    """/probe?domain=: every address of every MX host of the domain, one scrape."""
    if "target" in params:
        raise BadRequest("give 'target' (a host:port) or 'domain' (a mail domain), not both")
    text = params["domain"]
    if len(text) > MAX_TARGET_LENGTH:
        raise BadRequest(f"parameter 'domain' is longer than {MAX_TARGET_LENGTH} characters")
    domain = parse_domain(text)
    if isinstance(domain, str):
        raise BadRequest(f"invalid domain: {domain}")
    config = exporter.config
    module_name, module = module_parameter(config, params)
    debug = parse_debug(params.get("debug"))
    refusal = config.domain_probe_refusal(domain.a_label, domain.unicode, module_name)
    if refusal is not None:
        raise BadRequest(refusal, HTTPStatus.FORBIDDEN)
    # A configured domain is probed as configured (port, families, caps, expect_mail).
    configured = next((d for d in config.domains
                       if d.name == domain.a_label and d.module == module_name), None)
    configured = configured or next((d for d in config.domains if d.name == domain.a_label), None)
    deadline = probe_deadline(request.headers.get(SCRAPE_TIMEOUT_HEADER), module, time.monotonic())
    slots = request.probe_slots
    if not slots.acquire(request.client):
        return Answer(HTTPStatus.SERVICE_UNAVAILABLE,
                      f"too many concurrent probes (limit {slots.limit}); try again later\n")
    options = dict(port=module_default_port(module)) if configured is None else dict(
        port=configured.port, options=configured.mx_options, expect_mail=configured.expect_mail)
    # An allowed domain that is not configured gets what a configured one gets by default.
    options["switches"] = (configured.policy_switches if configured is not None else judgeable_switches(
        module, dane=config.dns.validating_resolver is not None, mta_sts=True))
    exporter.state.probe_started()
    try:
        result = probe_domain(domain.a_label, module, exporter.resolver, module_name=module_name,
                              deadline=deadline, hub=request.hub, policy=exporter.policy, **options)
    finally:
        exporter.state.probe_finished()
        slots.release()
    (log.debug if result.success else log.info)(
        "domain probe via /probe", domain=domain.a_label, module=module_name,
        verdict=result.verdict, client=request.client)
    rows, row = exporter.domain_probe_store.record_on_demand(result)
    metrics = render_probe_rows(rows, domain_chunks([row]))
    if debug:
        # The servers' bytes, read with curl in a terminal: their escape sequences stay text.
        body = (show_controls(report.render(result)).rstrip("\n")
                + "\n\nMetrics that would have been returned:\n").encode() + metrics
        return Answer(HTTPStatus.OK, body, TEXT)
    return Answer(HTTPStatus.OK, metrics, CONTENT_TYPE)
