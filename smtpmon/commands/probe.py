"""`smtpmon probe HOST[:PORT]`: one SMTP session now, printed as an annotated transcript.
`smtpmon probe --mx DOMAIN`: the mail domain as senders deliver to it: its MX table, one
session per MX address (in parallel), and the domain's verdict.

Also a Nagios/Icinga plugin: the last line is the status line with perfdata, and the exit
code is 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (bad usage).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from types import MappingProxyType

from smtpmon.config.addresses import format_address, is_ip, is_ipv6, parse_address
from smtpmon.config.domains import DNS_PORT, DnsSettings
from smtpmon.config.load import REPLY_STAGES, parse_size
from smtpmon.dns import DnsCache, MxOptions, MxResolver, ResolverSettings, parse_domain
from smtpmon.dns.mx import DEFAULT_MAX_ADDRESSES_PER_HOST, DEFAULT_MAX_MX_HOSTS
from smtpmon.domains import policy_report, probe_domain, report
from smtpmon.domains.policy import findings, judgeable_switches, policy_checker
from smtpmon.smtp.client import prepare_tls
from smtpmon.smtp.module import (
    AUTH_MECHANISMS,
    AUTH_TLS_MODES,
    TLS_MODES,
    TLS_VERSIONS,
    Module,
    PasswordUnavailable,
)
from smtpmon.smtp.replycodes import (
    ENHANCED_CLASS_NAMES,
    enhanced_meaning,
    enhanced_subject_meaning,
    meaning,
    reply_category,
    reply_class,
)
from smtpmon.smtp.results import ProbeResult, Reply
from smtpmon.smtp.session import module_default_port, run_probe
from smtpmon.smtp.transcript import days_until_expiry, render, summary_line

DESCRIPTION = """\
Run one SMTP session against HOST[:PORT] (default port 25, 465 with --tls implicit) and
print it as a person at a telnet prompt would see it, each reply explained, then a
Nagios-style status line with perfdata.

With --mx, the argument is a mail domain: resolve its MX hosts and their addresses as a
sending MTA does, print the MX table, run one session per address in parallel (each checking
the certificate against its MX host's name), print each transcript (or, with --brief, one
line per address) and the domain's verdict."""
EPILOG = """exit codes (Nagios plugin convention):
  0 OK
  1 WARNING: the probe failed on a 4xx reply, a temporary condition senders retry (421,
    450 greylisting, 451...); or the certificate expires within --warn-days; or the
    session was slower than --warning
  2 CRITICAL: the probe failed on a 5xx reply, or without a reply (no connection, a
    timeout, a TLS or certificate failure, a protocol error); or the certificate expires
    within --crit-days; or slower than --critical
  3 UNKNOWN: bad usage (contradictory flags such as --json with --status-only, too)

examples:
  smtpmon probe mx.example.org
  smtpmon probe mx.example.org:25 --tls starttls --warn-days 21
  smtpmon probe mx.example.org --mail-from probe@example.org --rcpt nobody@example.org --expect rcpt=550
  smtpmon probe smtp.example.org:465 --tls implicit --auth PLAIN --user probe --password-file /etc/smtpmon/pw
  smtpmon probe [2001:db8::25]:25 -6 --json
  smtpmon probe 2001:db8::25 --port 25 --server-name mx.example.org --tls starttls --status-only
                                                  as an Icinga/Nagios check: the host's address
                                                  ($HOSTADDRESS$, IPv4 or IPv6) and its name apart
  smtpmon probe --mx example.org --brief          every MX address of a mail domain
  smtpmon probe --mx example.org --dns-server 192.0.2.53 --tls starttls --json
  smtpmon probe --mx example.org --validating-resolver 127.0.0.1   DANE and MTA-STS verdicts

with --mx, the exit code follows the domain's verdict: 0 ok (or a null MX with
--no-mail-expected), 1 degraded (deliverable, but an MX address fails or an MX record is
broken; or undeliverable only by temporary 4xx replies, which senders retry; an MX
failing a testing MTA-STS policy; a policy that cannot be fetched), 2 undeliverable (or an
address failing DANE, or an enforced MTA-STS policy), 3 UNKNOWN (bad usage, an invalid domain)
"""
USAGE_EXIT_CODE = 3  # Nagios UNKNOWN

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
_STATUS_WORDS = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="HOST[:PORT]",
                        help="server to probe; [ADDRESS]:PORT for IPv6, or a bare address with "
                             "--port; with --mx, a mail domain")
    parser.add_argument("--port", type=_port, metavar="PORT",
                        help="the port, given apart: then HOST is a name or an IPv4 or IPv6 address "
                             "without a port or brackets (as Nagios' $HOSTADDRESS$ is); with --mx, "
                             "the port of every MX address (default 25, 465 with --tls implicit)")
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--tls", choices=TLS_MODES, default="opportunistic",
                     help="none; starttls (required, the certificate must verify); opportunistic "
                          "(when offered, the default: as sending MTAs do, a certificate that does "
                          "not verify is reported, not a failure); implicit (port 465, the "
                          "certificate must verify)")
    tls.add_argument("--no-verify", "--insecure", dest="tls_verify", action="store_false",
                     help="do not verify the certificate (it is still inspected and reported)")
    tls.add_argument("--ca-file", metavar="PEM", help="trust only these CA certificates")
    tls.add_argument("--server-name", metavar="NAME", help="name to verify the certificate against (default: HOST)")
    tls.add_argument("--tls-min-version", choices=TLS_VERSIONS, help="refuse a TLS version older than this")
    session = parser.add_argument_group("session")
    session.add_argument("--ehlo-name", metavar="NAME", help="name sent in EHLO (default: this host's name or address)")
    session.add_argument("--no-helo-fallback", dest="helo_fallback", action="store_false",
                         help="do not try HELO when EHLO is refused")
    session.add_argument("--auth", type=str.upper, choices=AUTH_MECHANISMS,
                         help="authenticate with this mechanism; needs --tls starttls or implicit")
    session.add_argument("--user", help="AUTH username")
    session.add_argument("--password-file", metavar="PATH", help="file holding the AUTH password")
    session.add_argument("--password-env", metavar="VARIABLE", help="environment variable holding the AUTH password")
    session.add_argument("--mail-from", metavar="ADDRESS", help='send MAIL FROM (use "" for the null sender)')
    session.add_argument("--rcpt", metavar="ADDRESS", action="append", default=[], help="send RCPT TO (repeatable)")
    session.add_argument("--data", action="store_true", help="send a small test message after RCPT")
    session.add_argument("--message-size", metavar="SIZE", type=_size,
                         help="pad the test message to this size (bytes, or 500KB, 10MiB...) to check "
                              "the server's size limit (552 5.3.4 after the message); needs --data")
    session.add_argument("--expect", metavar="STAGE=CODE[,CODE]", action="append", default=[], type=_expectation,
                         help="codes a stage must get, e.g. rcpt=550 (repeatable)")
    session.add_argument("--timeout", metavar="SECONDS", type=_positive_seconds, default=10.0,
                         help="deadline for the whole session (default 10)")
    session.add_argument("--connect-timeout", metavar="SECONDS", type=_positive_seconds, default=3.0,
                         help="give up each address's TCP connect after this and try the host's next "
                              "address, as MTAs do (default 3)")
    family = session.add_mutually_exclusive_group()
    family.add_argument("-4", dest="ip_protocol", action="store_const", const="ip4", default="any", help="IPv4 only")
    family.add_argument("-6", dest="ip_protocol", action="store_const", const="ip6", help="IPv6 only")
    domain = parser.add_argument_group("mail domain (--mx)")
    domain.add_argument("--mx", action="store_true",
                        help="the argument is a mail domain: probe every address of every MX host")
    domain.add_argument("--dns-server", metavar="ADDR[:PORT]", action="append", default=[],
                        type=_dns_server, help="ask this recursive resolver (repeatable; default: "
                        "the system resolver's, from /etc/resolv.conf)")
    domain.add_argument("--max-mx-hosts", metavar="N", type=_count, default=DEFAULT_MAX_MX_HOSTS,
                        help=f"probe at most N MX hosts, the most preferred (default {DEFAULT_MAX_MX_HOSTS})")
    domain.add_argument("--max-addresses", metavar="N", type=_count,
                        default=DEFAULT_MAX_ADDRESSES_PER_HOST,
                        help=f"probe at most N addresses of each MX host (default {DEFAULT_MAX_ADDRESSES_PER_HOST})")
    domain.add_argument("--no-mail-expected", dest="expect_mail", action="store_false",
                        help="a null MX (MX 0 .) is the expected answer, not a failure")
    domain.add_argument("--brief", action="store_true",
                        help="one line per address instead of each transcript")
    domain.add_argument("--validating-resolver", metavar="ADDR[:PORT]", type=_dns_server,
                        help="a DNSSEC-validating resolver whose AD bit is trusted: check DANE "
                        "(TLSA per MX host, the presented chain per address) through it alone")
    domain.add_argument("--no-dane", dest="dane", action="store_false",
                        help="do not check DANE even with --validating-resolver")
    domain.add_argument("--no-mta-sts", dest="mta_sts", action="store_false",
                        help="do not check MTA-STS and TLS-RPT (checked by default when the "
                        "session starts TLS and verifies)")
    domain.add_argument("--mta-sts-ca-file", metavar="FILE",
                        help="also trust these CAs (PEM) for the MTA-STS policy fetch: for a "
                        "policy host with a private CA")
    output = parser.add_argument_group("output and thresholds")
    form = output.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true",
                      help="print the whole result as JSON instead, each reply with its class, "
                           "category and meanings")
    form.add_argument("--status-only", action="store_true", help="print only the status line (for Nagios/Icinga)")
    output.add_argument("--no-annotations", dest="annotate", action="store_false",
                        help="do not explain each reply under it")
    output.add_argument("--warning", metavar="SECONDS", type=_positive_seconds,
                        help="WARNING when the session takes longer")
    output.add_argument("--critical", metavar="SECONDS", type=_positive_seconds,
                        help="CRITICAL when the session takes longer")
    output.add_argument("--warn-days", metavar="DAYS", type=float, default=14.0,
                        help="WARNING when the certificate expires within DAYS (default 14)")
    output.add_argument("--crit-days", metavar="DAYS", type=float, default=3.0,
                        help="CRITICAL when the certificate expires within DAYS (default 3)")


def run(args: argparse.Namespace) -> int:
    if args.mx:
        return run_domain(args)
    try:
        module = module_from_args(args)
        host, port = target_of(args, module_default_port(module))
    except ValueError as error:
        print(f"smtpmon probe: error: {error}", file=sys.stderr)
        return UNKNOWN
    if module.tls != "none":
        # One probe per process: its TLS set-up (see prepare_tls) comes before the session, so
        # that no part of it counts as the server's time. (The engine defers it for
        # opportunistic TLS until STARTTLS is offered, to spare daemons the memory.)
        prepare_tls(verify=module.tls_verify, ca_file=module.tls_ca_file, min_version=module.tls_min_version)
    result = run_probe(format_address(host, port), host, port, module, module_name="cli")
    status, notes = judge(result, args)
    if args.json:
        print(result_to_json(result))
    else:
        if not args.status_only:
            sys.stdout.write(render(result, annotate=args.annotate, summary=False))
        print(status_line(result, status, notes, args))
    return status


def target_of(args: argparse.Namespace, default_port: int) -> tuple[str, int]:
    """(host, port) from HOST[:PORT], or from HOST and --port."""
    if args.port is None:
        return parse_address(args.target.strip(), default_port)
    host = args.target.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError("empty target")
    if ":" in host and not is_ipv6(host):
        raise ValueError(f"target {args.target!r}: with --port, give the host alone: a name, "
                         "an IPv4 or an IPv6 address")
    return host, args.port


def run_domain(args: argparse.Namespace) -> int:
    """--mx: the domain resolved, every MX address probed, the verdict as the exit code."""
    domain = parse_domain(args.target)
    if isinstance(domain, str):
        print(f"smtpmon probe: error: --mx: {domain}", file=sys.stderr)
        return UNKNOWN
    try:
        module = module_from_args(args)
    except ValueError as error:
        print(f"smtpmon probe: error: {error}", file=sys.stderr)
        return UNKNOWN
    # The domain's families are the addresses asked for; each session takes its address's.
    family = {"any": "both", "ip4": "ipv4", "ip6": "ipv6"}[module.ip_protocol]
    options = MxOptions(ip_protocol=family, max_mx_hosts=args.max_mx_hosts,
                        max_addresses_per_host=args.max_addresses)
    if args.mta_sts_ca_file is not None and not _readable(args.mta_sts_ca_file):
        print(f"smtpmon probe: error: --mta-sts-ca-file {args.mta_sts_ca_file}: cannot read it",
              file=sys.stderr)
        return UNKNOWN
    resolver = MxResolver(ResolverSettings(nameservers=tuple(args.dns_server)), DnsCache())
    dns = DnsSettings(nameservers=tuple(args.dns_server), validating_resolver=args.validating_resolver)
    switches = judgeable_switches(module, dane=args.dane and args.validating_resolver is not None,
                                  mta_sts=args.mta_sts, mta_sts_ca_file=args.mta_sts_ca_file)
    if module.tls != "none":  # before the sessions, as for one session (see run)
        prepare_tls(verify=module.tls_verify, ca_file=module.tls_ca_file, min_version=module.tls_min_version)
    port = args.port if args.port is not None else module_default_port(module)
    result = probe_domain(domain.a_label, module, resolver, port=port, options=options,
                          expect_mail=args.expect_mail, module_name="cli",
                          policy=policy_checker(dns, resolver), switches=switches)
    status, notes = judge_domain(result, args)
    if args.json:
        print(domain_to_json(result))
    else:
        if not args.status_only:
            sys.stdout.write(report.mx_table(result) + "\n")
            sys.stdout.write(report.session_lines(result, brief=args.brief, annotate=args.annotate))
            sys.stdout.write(policy_report.render(result))
        print(domain_status_line(result, status, notes, args))
    return status


_VERDICT_STATUS = {"ok": OK, "no_mail": OK, "degraded": WARNING, "undeliverable": CRITICAL,
                   "invalid": UNKNOWN}


def judge_domain(result, args: argparse.Namespace) -> tuple[int, list[str]]:
    """Nagios status from the domain's verdict, then the certificates and the duration as for
    one session (the worst address counts)."""
    status, notes = _VERDICT_STATUS[result.verdict], []
    failed = [probe.result for probe in result.probes if not probe.accepts]
    if status == CRITICAL and failed and all(temporary_failure(probe) for probe in failed):
        # As for one server: senders queue and retry a 4xx (RFC 5321 4.2.1).
        status = WARNING
        notes.append("temporary failures (4xx): senders retry")
    for probe in result.probes:
        probe_status, probe_notes = judge(probe.result, args)
        if probe.accepts and probe_status > status:
            status = probe_status
        notes += [f"{probe.mx.name} [{probe.address.ip}]: {note}" for note in probe_notes]
    policy_status, policy_notes = judge_policy(result)
    return max(status, policy_status), list(dict.fromkeys(notes + policy_notes))


def judge_policy(result) -> tuple[int, list[str]]:
    """What the TLS policy adds (smtpmon.domains.policy.findings): a DANE failure, or an MX
    failing an enforced MTA-STS policy, is CRITICAL (senders that honour them do not deliver
    there); an MX failing a testing policy, or a policy that cannot be fetched, is a WARNING."""
    found = findings(result.policy)
    status = max((CRITICAL if finding.severity == "critical" else WARNING for finding in found),
                 default=OK)
    return status, [str(finding) for finding in found]


def domain_status_line(result, status: int, notes: list[str], args: argparse.Namespace) -> str:
    text = report.verdict_line(result)
    if notes:
        text += "; " + "; ".join(notes)
    thresholds = ";".join("" if value is None else f"{value:g}" for value in (args.warning, args.critical))
    perfdata = [f"time={result.duration_seconds:.6f}s;{thresholds};0",
                f"dns={result.resolution.duration_seconds:.6f}s;;;0",
                f"addresses={len(result.probes)};;;0", f"accepting={result.accepting()};;;0"]
    return f"SMTP {_STATUS_WORDS[status]} - {text.replace('|', '/')} | {' '.join(perfdata)}"


def domain_to_json(result) -> str:
    """The whole tree: resolution (MX hosts, addresses, lookups, notes), every address's
    session, and the verdicts."""
    def encode(value):
        if isinstance(value, (set, frozenset)):
            return sorted(value)
        if isinstance(value, bytes):  # TLSA association data, presented certificates (DER)
            return value.hex()
        raise TypeError(f"cannot encode {type(value).__name__}")

    resolution = dataclasses.asdict(result.resolution)
    for host, original in zip(resolution["mx_hosts"], result.resolution.mx_hosts):
        host["addresses"] = [address._asdict() for address in original.addresses]
    tree = {
        "domain": result.name,
        "domain_unicode": result.resolution.domain_unicode,
        "module": result.module,
        "port": result.port,
        "verdict": result.verdict,
        "deliverable": result.deliverable,
        "most_preferred_accepts": result.most_preferred_accepts,
        "expect_mail": result.expect_mail,
        "addresses": {family: result.addresses(family) for family in ("ipv4", "ipv6")},
        "accepting": {family: result.accepting(family) for family in ("ipv4", "ipv6")},
        "duration_seconds": result.duration_seconds,
        "notes": list(result.notes),
        "resolution": resolution,
        "policy": None if result.policy is None else dataclasses.asdict(result.policy),
        "probes": [{"mx": probe.mx.name, "preference": probe.mx.preference,
                    "family": probe.address.family, "address": probe.address.ip,
                    "accepts": probe.accepts, "result": dataclasses.asdict(probe.result)}
                   for probe in result.probes],
    }
    return json.dumps(tree, default=encode, indent=2, ensure_ascii=False)


def module_from_args(args: argparse.Namespace) -> Module:
    """A Module from the flags; ValueError names the flag that is wrong."""
    if args.auth and args.user is None:
        raise ValueError("--auth needs --user")
    if args.auth and not (args.password_file or args.password_env):
        raise ValueError("--auth needs --password-file or --password-env")
    if (args.user or args.password_file or args.password_env) and not args.auth:
        raise ValueError("--user, --password-file and --password-env need --auth")
    if args.rcpt and args.mail_from is None:
        raise ValueError("--rcpt needs --mail-from")
    if args.data and not args.rcpt:
        raise ValueError("--data needs at least one --rcpt")
    if args.message_size is not None and not args.data:
        raise ValueError("--message-size needs --data")
    if args.ca_file is not None and not _readable(args.ca_file):
        raise ValueError(f"--ca-file {args.ca_file}: cannot read it")
    module = Module(
        tls=args.tls,
        tls_verify=args.tls_verify,
        tls_ca_file=args.ca_file,
        tls_server_name=args.server_name,
        tls_min_version=args.tls_min_version,
        ehlo_name=args.ehlo_name,
        helo_fallback=args.helo_fallback,
        auth_mechanism=args.auth,
        auth_username=args.user,
        auth_password_file=args.password_file,
        auth_password_env=args.password_env,
        mail_from=args.mail_from,
        rcpt_to=tuple(args.rcpt),
        data=args.data,
        message_size=args.message_size,
        expect=MappingProxyType(dict(args.expect)),
        timeout_seconds=args.timeout,
        connect_timeout_seconds=args.connect_timeout,
        ip_protocol=args.ip_protocol,
    )
    if module.auth_mechanism:
        # Fail now, with a clear line, rather than half way through the session.
        try:
            module.read_password()
        except PasswordUnavailable as error:
            flag = "--password-file" if args.password_file else "--password-env"
            raise ValueError(f"{flag}: {error}") from None
        if module.tls not in AUTH_TLS_MODES:  # the rule the config file has
            raise ValueError(f"--auth needs --tls {' or '.join(AUTH_TLS_MODES)}, so the password "
                             f"never crosses the network in clear; got --tls {module.tls}")
    return module


def judge(result: ProbeResult, args: argparse.Namespace) -> tuple[int, list[str]]:
    """Nagios status and the words that explain anything other than OK."""
    status, notes = OK, []

    def worse(level: int, note: str) -> None:
        nonlocal status
        status = max(status, level)
        notes.append(note)

    if not result.success:
        # A 4xx is temporary: senders queue and retry (RFC 5321 4.2.1). Anything else that
        # failed (a 5xx, no connection, TLS, a timeout) is critical.
        code = temporary_failure(result)
        if code is not None:
            worse(WARNING, f"temporary failure ({code}): senders retry")
        else:
            status = CRITICAL
    days = days_until_expiry(result.tls)
    if days is not None:
        if days < 0:
            worse(CRITICAL, "certificate expired")
        elif days <= args.crit_days:
            worse(CRITICAL, f"certificate expires within {args.crit_days:g} days")
        elif days <= args.warn_days:
            worse(WARNING, f"certificate expires within {args.warn_days:g} days")
    if args.critical is not None and result.duration_seconds > args.critical:
        worse(CRITICAL, f"slower than {args.critical:g}s")
    elif args.warning is not None and result.duration_seconds > args.warning:
        worse(WARNING, f"slower than {args.warning:g}s")
    return status, notes


def temporary_failure(result: ProbeResult) -> int | None:
    """The 4xx code a failed session failed on, or None (a success, a 5xx, no reply)."""
    if result.success or not result.failed_stage:
        return None
    failed = result.stage(result.failed_stage)
    reply = failed.reply if failed is not None else None
    if reply is not None and reply.code is not None and reply.code // 100 == 4:
        return reply.code
    return None


def status_line(result: ProbeResult, status: int, notes: list[str], args: argparse.Namespace) -> str:
    """`SMTP OK - <summary> | time=0.012s;warn;crit;0 banner=0.001s;;;0 ...`"""
    text = summary_line(result)
    if notes:
        text += "; " + "; ".join(notes)
    thresholds = ";".join("" if value is None else f"{value:g}" for value in (args.warning, args.critical))
    perfdata = [f"time={result.duration_seconds:.6f}s;{thresholds};0"]
    perfdata += [f"{stage.stage}={stage.duration_seconds:.6f}s;;;0" for stage in result.stages]
    # "|" would start the perfdata early; the summary carries server words.
    return f"SMTP {_STATUS_WORDS[status]} - {text.replace('|', '/')} | {' '.join(perfdata)}"


def result_to_json(result: ProbeResult) -> str:
    def encode(value):
        if isinstance(value, (set, frozenset)):
            return sorted(value)
        if isinstance(value, bytes):  # TLSA association data, presented certificates (DER)
            return value.hex()
        raise TypeError(f"cannot encode {type(value).__name__}")

    document = dataclasses.asdict(result)
    for stage, stage_document in zip(result.stages, document["stages"]):
        for reply, reply_document in zip(stage.replies, stage_document["replies"]):
            reply_document.update(reply_meanings(reply))
    return json.dumps(document, default=encode, indent=2)


def reply_meanings(reply: Reply) -> dict:
    """What the transcript's annotations say of a reply, as fields: its class and category
    (the metric labels), the code's meaning, and the enhanced code's class, subject and
    meaning (None where there is none)."""
    described = {
        "class": reply_class(reply.code),
        "category": reply_category(reply.code),
        "meaning": meaning(reply.code) if reply.code is not None else None,
        "enhanced_class": None,
        "enhanced_subject": None,
        "enhanced_meaning": None,
    }
    if reply.enhanced is not None:
        status_class, subject, _ = (int(part) for part in reply.enhanced.split("."))
        described.update(enhanced_class=ENHANCED_CLASS_NAMES[status_class],
                         enhanced_subject=enhanced_subject_meaning(subject),
                         enhanced_meaning=enhanced_meaning(reply.enhanced))
    return described


# -- argument types: argparse turns their errors into one usage line and exit 3 ----------------
def _port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 1-65535, got {text!r}")
    return int(text)


def _expectation(text: str) -> tuple[str, tuple[int, ...]]:
    stage, equals, codes = text.partition("=")
    stage = stage.strip().lower()
    if not equals or stage not in REPLY_STAGES:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected STAGE=CODE[,CODE] with STAGE one of {', '.join(REPLY_STAGES)}"
        )
    try:
        numbers = tuple(int(code) for code in codes.split(","))
    except ValueError:
        numbers = ()
    if not numbers or not all(100 <= code <= 599 for code in numbers):
        raise argparse.ArgumentTypeError(f"{text!r}: codes must be numbers 100-599")
    return stage, numbers


def _size(text: str) -> int:
    try:
        return parse_size(int(text) if text.isdigit() else text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _dns_server(text: str) -> tuple[str, int]:
    try:
        host, port = parse_address(text.strip(), DNS_PORT)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    if not is_ip(host):
        raise argparse.ArgumentTypeError(f"{text!r}: an IP address, with an optional port")
    return host, port


def _count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of at least 1")
    return int(text)


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive number of seconds")
    return value


def _readable(path: str) -> bool:
    try:
        with open(path, "rb"):
            return True
    except OSError:
        return False

