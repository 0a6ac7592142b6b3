"""Mail domains probed as senders deliver to them: every MX host, every address, one SMTP
session each, and the verdicts (deliverable, most preferred MX accepting, by family).

Plain values in, frozen values out; no YAML, no metrics, no scheduler here.

    resolver = MxResolver(ResolverSettings(nameservers=(("127.0.0.1", 53),)), DnsCache())
    result = probe_domain("example.org", Module(), resolver, options=MxOptions())
    result.verdict, result.deliverable, [(p.mx.name, p.address.ip, p.accepts) for p in result.probes]
"""

from smtpmon.domains.probe import address_target, probe_domain, run_on_hub, run_on_threads
from smtpmon.domains.results import FAMILIES, VERDICTS, AddressProbe, DomainResult

__all__ = [
    "FAMILIES", "VERDICTS", "AddressProbe", "DomainResult", "address_target", "probe_domain",
    "run_on_hub", "run_on_threads",
]
