"""`probe_domain(...) -> DomainResult`: a mail domain probed as senders deliver to it.

1. The domain is resolved as a sending MTA resolves it (smtpmon.dns.MxResolver): MX records
   by preference, every MX host's addresses, within the caps. From the cache alone when every
   answer is fresh there (no waiting: on the caller's thread); else the resolution is blocking
   (dnspython), so it runs on the shared lookup pool (smtpmon.smtp.client.LOOKUPS); a caller on
   a hub parks meanwhile, so the hub's thread never blocks. Identical resolutions in flight
   (one domain probed by two modules) share one call. The TLS policy's lookups go the same
   two ways.
2. One SMTP session per address of every MX host, all in parallel: connecting to the address
   while TLS sends and checks the MX host's name (SNI, certificate), as sending MTAs do.
3. The verdicts (smtpmon.domains.results) are derived from the two.

One deadline covers it all: the resolution may use at most RESOLUTION_SHARE of the time (and
never more than the resolver's lifetime), the sessions get what is left. Never raises: a
resolver that never answers, a session that hangs, a bug in a session all become results.

How the sessions run is the caller's: `run_sessions(thunks, until)` runs each thunk and
returns their results in order (None for one not finished by `until`). `run_on_hub(hub)`
spawns them all on a hub, `run_on_threads` gives each a thread (the command line); the
scheduler passes its own, which keeps every session under `max_concurrency`.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
from collections.abc import Callable, Sequence

from smtpmon.dns import DomainResolution, MxOptions, MxResolver, NotCached, parse_domain
from smtpmon.domains.policy import PolicyChecker, PolicyLookups, PolicySwitches, judge
from smtpmon.domains.results import AddressProbe, DomainResult
from smtpmon.logs import get_logger
from smtpmon.net.hub import Hub
from smtpmon.net.lookups import LookupPool
from smtpmon.smtp.client import LOOKUPS
from smtpmon.smtp.module import Module
from smtpmon.smtp.results import ProbeResult
from smtpmon.smtp.session import SMTP_PORT, run_probe

# The switches of a domain that asks no policy check (the default).
NO_POLICY = PolicySwitches()

log = get_logger("domains")

# The resolution's share of the probe's time: with an answer in the cache it takes none; with
# a silent resolver it must leave the sessions time to say so about the stale answer.
RESOLUTION_SHARE = 0.5
# A session ends at the domain's deadline by itself; this is how long past it to wait for its
# result (recording it, a QUIT cut short) before calling it unfinished.
SESSION_GRACE_SECONDS = 1.0

SessionThunk = Callable[[], ProbeResult]
SessionRunner = Callable[[Sequence[SessionThunk], float], list]
DEFAULT_MX_OPTIONS = MxOptions()  # frozen: one shared default


def probe_domain(
    domain: str,
    module: Module,
    resolver: MxResolver,
    *,
    port: int = SMTP_PORT,
    options: MxOptions = DEFAULT_MX_OPTIONS,
    expect_mail: bool = True,
    module_name: str = "default",
    deadline: float | None = None,
    hub: Hub | None = None,
    run_sessions: SessionRunner | None = None,
    lookups: LookupPool = LOOKUPS,
    policy: PolicyChecker | None = None,
    switches: PolicySwitches = NO_POLICY,
) -> DomainResult:
    """Resolve `domain` (Unicode or A-label) and run `module`'s session against every address
    of every MX host on `port`, by the monotonic `deadline` (default: the module's timeout
    from now). With a hub (called from a session it spawned), the resolution and the sessions
    park on it; without one, this thread blocks. Never raises. With a `policy` checker and
    `switches` on, the domain's TLS policy is looked up before the sessions (on the lookup
    pool) and judged after them (smtpmon.domains.policy): `DomainResult.policy`."""
    started_at, start = time.time(), time.monotonic()
    if deadline is None:
        deadline = start + module.timeout_seconds
    if run_sessions is None:
        run_sessions = run_on_hub(hub) if hub is not None else run_on_threads
    resolution = _resolve(resolver, domain, options, start, deadline, hub, lookups)
    pairs = resolution.addresses
    looked_up = None
    if policy is not None and switches.any and pairs:
        looked_up = _look_up_policy(policy, resolution, port, switches, start, deadline, hub, lookups)
    # The address decides the family; the module's ip_protocol would refuse the other one.
    session_module = module if module.ip_protocol == "any" else dataclasses.replace(
        module, ip_protocol="any")
    thunks = [
        functools.partial(run_probe, address_target(address.ip, port), address.ip, port,
                          session_module, deadline=deadline, module_name=module_name, hub=hub,
                          server_name=host.name,
                          want_chain=looked_up is not None and looked_up.wants_chain(host.name))
        for host, address in pairs]
    notes: list[str] = []
    results: list = []
    if thunks:
        try:
            results = list(run_sessions(thunks, deadline + SESSION_GRACE_SECONDS))
        except Exception as error:  # the promise: a result, whatever the runner did
            log.exception("running a domain's sessions failed", domain=domain)
            notes.append(f"the sessions could not be run: {type(error).__name__}: {error}")
        results += [None] * (len(thunks) - len(results))
    probes = []
    for (host, address), result in zip(pairs, results):
        if result is None:
            result = _unfinished(address_target(address.ip, port), module_name, started_at,
                                 time.monotonic() - start)
            notes.append(f"{host.name} {address.ip}: the session did not finish by the deadline")
        probes.append(AddressProbe(host, address, result))
    if looked_up is None and policy is not None and switches.any and pairs:
        notes.append("the TLS policy lookups did not finish in time")
    return DomainResult(
        policy=judge(looked_up, probes) if looked_up is not None else None,
        domain=domain, module=module_name, port=port, resolution=resolution,
        probes=tuple(probes), expect_mail=expect_mail, started_at=started_at,
        duration_seconds=time.monotonic() - start, notes=tuple(dict.fromkeys(notes)))


def address_target(ip: str, port: int) -> str:
    """The `target` of one address's session: "192.0.2.1:25", "[2001:db8::1]:25"."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _resolve(resolver: MxResolver, domain: str, options: MxOptions, start: float,
             deadline: float, hub: Hub | None, lookups: LookupPool) -> DomainResolution:
    parsed = parse_domain(domain)
    if isinstance(parsed, str):  # answered at once, without asking anybody
        return resolver.resolve(domain, options)
    until = min(deadline, start + resolver.resolver.settings.lifetime_seconds,
                start + (deadline - start) * RESOLUTION_SHARE)
    try:  # every answer fresh in the cache (most runs): on this thread, no lookup thread woken
        return resolver.resolve(parsed.a_label, options, until, cached_only=True)
    except Exception:  # NotCached: a question to ask; anything else the pool's way reports
        pass
    call = functools.partial(resolver.resolve, parsed.a_label, options, until)
    key = ("mx", id(resolver), parsed.a_label, options)
    # The pool's wait is a little longer than the resolution's own deadline, which it keeps.
    answered, outcome = lookups.run(key, call, until + SESSION_GRACE_SECONDS, hub)
    if answered and isinstance(outcome, DomainResolution):
        return outcome
    if answered:  # resolve() promises not to raise; a bug still makes a result
        detail = f"the resolution failed: {type(outcome).__name__}: {outcome}"
    else:
        detail = (f"no resolution within {until - start:.1f} s: the lookup threads are all "
                  "busy or the resolver is stuck")
    log.warning("domain resolution failed", domain=parsed.a_label, detail=detail)
    return DomainResolution(domain=parsed.a_label, domain_unicode=parsed.unicode,
                            state="timeout", ip_protocol=options.ip_protocol, notes=(detail,),
                            duration_seconds=time.monotonic() - start)


def _look_up_policy(policy: PolicyChecker, resolution: DomainResolution, port: int,
                    switches: PolicySwitches, start: float, deadline: float, hub: Hub | None,
                    lookups: LookupPool) -> PolicyLookups | None:
    """The policy lookups from the caches on this thread when everything is there (most
    runs: answers live for their TTL, policies for their max_age), else on the lookup pool,
    within the resolution's share of the time left; None when they did not finish or failed
    (logged)."""
    try:
        return policy.look_up(resolution.domain, resolution.mx_hosts, port, switches, deadline,
                              cached_only=True)
    except NotCached:
        pass  # something to ask or fetch: on the pool
    except Exception as error:  # a bug: as the pool's way reports it
        log.warning("policy lookups failed", domain=resolution.domain,
                    detail=f"{type(error).__name__}: {error}")
        return None
    now = time.monotonic()
    until = min(deadline, now + (deadline - now) * RESOLUTION_SHARE)
    call = functools.partial(policy.look_up, resolution.domain, resolution.mx_hosts, port,
                             switches, until)
    key = ("policy", id(policy), resolution.domain, port, switches)
    answered, outcome = lookups.run(key, call, until + SESSION_GRACE_SECONDS, hub)
    if answered and isinstance(outcome, PolicyLookups):
        return outcome
    if answered:
        log.warning("policy lookups failed", domain=resolution.domain,
                    detail=f"{type(outcome).__name__}: {outcome}")
    return None


def _unfinished(target: str, module_name: str, started_at: float, took: float) -> ProbeResult:
    return ProbeResult(target=target, module=module_name, success=False, started_at=started_at,
                       duration_seconds=took, reason="timeout",
                       detail="the session did not finish by the domain's deadline")


def run_on_hub(hub: Hub) -> SessionRunner:
    """Every thunk as a session of `hub`, at once; the caller (itself a session of the hub)
    parks until all are done or `until` passes."""

    def run(thunks: Sequence[SessionThunk], until: float) -> list:
        results: list = [None] * len(thunks)
        pending = [len(thunks)]
        wake: list[Callable[[], None]] = []

        def one(index: int, thunk: SessionThunk) -> None:
            try:
                results[index] = thunk()
            finally:
                pending[0] -= 1
                if pending[0] == 0 and wake:
                    wake[0]()

        for index, thunk in enumerate(thunks):
            hub.spawn(one, index, thunk)

        def start(done: Callable[[], None]) -> None:
            if pending[0]:
                wake.append(done)
            else:
                done()

        if pending[0]:
            hub.wait_callback(start, until)
        return list(results)

    return run


def run_on_threads(thunks: Sequence[SessionThunk], until: float) -> list:
    """Every thunk on a thread of its own, blocking (the command line): the caller waits until
    all are done or `until` passes."""
    results: list = [None] * len(thunks)

    def one(index: int, thunk: SessionThunk) -> None:
        results[index] = thunk()

    threads = [threading.Thread(target=one, args=(index, thunk), name="smtpmon-domain",
                                daemon=True) for index, thunk in enumerate(thunks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, until - time.monotonic()))
    return list(results)
