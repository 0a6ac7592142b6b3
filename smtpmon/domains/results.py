"""What probing a mail domain found: the resolution, one SMTP session per MX address, and the
verdicts a mail admin asks for, derived from them (plain, frozen values).

"Accepts mail" is the session's success: the module's stages all passed (banner, EHLO,
STARTTLS as the module asks; MAIL and RCPT when it sends them).
"""

from __future__ import annotations

from dataclasses import dataclass

from smtpmon.dns import Address, DomainResolution, MxHost
from smtpmon.domains.policy import DomainPolicy
from smtpmon.smtp.results import ProbeResult

FAMILIES: tuple[str, ...] = ("ipv4", "ipv6")

# The domain's verdict, one word (a fixed vocabulary: docs/domains.md explains each).
VERDICTS: tuple[str, ...] = (
    "ok",             # every probed address of every MX accepts, DNS is clean
    "degraded",       # a sender delivers, but an MX, an address or a DNS record is broken
    "undeliverable",  # mail is expected, and no sender could deliver now
    "no_mail",        # null MX (RFC 7505) on a domain that is not expected to receive mail
    "invalid",        # the configured text is not a mail domain: nothing was asked
)

# DNS states after which a sender delivers to what it found (the others stop it).
_USABLE_STATES = ("ok", "implicit_mx", "misconfigured")


@dataclass(frozen=True, slots=True)
class AddressProbe:
    """One session against one address of one MX host, checked against the MX host's name."""

    mx: MxHost
    address: Address
    result: ProbeResult

    @property
    def accepts(self) -> bool:
        return self.result.success


@dataclass(frozen=True, slots=True)
class DomainResult:
    """A mail domain probed as a sender would deliver to it.

    `domain` is the name as configured (the `domain` label is `resolution.domain`, the
    A-label); `probes` follow the resolution's order (MX preference, then address order).
    `expect_mail` false makes a null MX the expected answer rather than a failure.
    """

    domain: str
    module: str
    port: int
    resolution: DomainResolution
    probes: tuple[AddressProbe, ...]
    expect_mail: bool
    started_at: float  # Unix time
    duration_seconds: float
    notes: tuple[str, ...] = ()  # about the probing itself (sessions cut by the deadline)
    policy: DomainPolicy | None = None  # when DANE or MTA-STS is checked

    @property
    def name(self) -> str:
        """The A-label form: what labels, keys and DNS use."""
        return self.resolution.domain

    @property
    def mx_hosts(self) -> tuple[MxHost, ...]:
        return self.resolution.mx_hosts

    def addresses(self, family: str) -> int:
        """How many addresses of this family are probed (after the caps)."""
        return sum(1 for host in self.mx_hosts for address in host.addresses
                   if address.family == family)

    def accepting(self, family: str | None = None) -> int:
        """How many probed addresses (of `family`, or of any) accept mail."""
        return sum(1 for probe in self.probes
                   if probe.accepts and (family is None or probe.address.family == family))

    @property
    def most_preferred_accepts(self) -> bool:
        """Every address of the most preferred MX hosts (all those of the lowest preference)
        accepts: the MX that gets the mail first works, so no sender has to fall back."""
        usable = [host for host in self.mx_hosts if host.usable]
        if not usable:
            return False
        best = min(host.preference for host in usable)
        chosen = [probe for probe in self.probes if probe.mx.preference == best]
        return bool(chosen) and all(probe.accepts for probe in chosen)

    @property
    def deliverable(self) -> bool:
        """Would a sender following RFC 5321 deliver now? It tries the MX hosts in preference
        order, each host's addresses in turn, until one accepts: so, does any?"""
        return self.resolution.state in _USABLE_STATES and self.accepting() > 0

    @property
    def verdict(self) -> str:
        state = self.resolution.state
        if state == "invalid_name":
            return "invalid"
        if state == "null_mx":
            return "undeliverable" if self.expect_mail else "no_mail"
        if not self.deliverable:
            return "undeliverable"
        # A stale answer (a DNS hiccup within the grace time) and a cap that cut are facts of
        # their own (metrics, notes), not breakage.
        if state == "misconfigured" or self.accepting() < len(self.probes):
            return "degraded"
        return "ok"

    @property
    def success(self) -> bool:
        """Nothing needs a person: the verdict is ok, or no mail is expected and none is."""
        return self.verdict in ("ok", "no_mail")
