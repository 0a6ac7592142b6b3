"""Run a command under the parts of a unit's sandbox that need no namespace, without systemd.

    python tests/systemd_sandbox.py systemd/smtpmon.service -- COMMAND [ARG...]

A unit cannot be started where systemd is not the init process (containers, CI). But most of
what can break a Python daemon under the unit is per-process state that any process may set on
itself before exec: this script reads the unit and applies it the way systemd 252 does.

Reproduced:
- the execution environment: working directory / (no WorkingDirectory=), an environment holding
  only what systemd sets for a DynamicUser= service (PATH, HOME=/, USER and LOGNAME named after
  the unit, SHELL, INVOCATION_ID, SYSTEMD_EXEC_PID), UMask=;
- NoNewPrivileges=; CapabilityBoundingSet= (emptied when run as root, so the daemon holds no
  capability at all; an unprivileged caller has none to lose);
- the seccomp filters, each returning the errno systemd uses: SystemCallFilter= (groups expanded
  by `systemd-analyze syscall-filter`) with SystemCallErrorNumber=; MemoryDenyWriteExecute=;
  RestrictAddressFamilies=; RestrictNamespaces= (clone3 fails with ENOSYS so glibc falls back to
  clone, whose flags are checked); RestrictRealtime=; RestrictSUIDSGID=; LockPersonality=; and
  the system-call part of PrivateDevices= (@raw-io), ProtectKernelModules= (@module),
  ProtectKernelLogs= (syslog), ProtectClock= (@clock), ProtectHostname= (sethostname,
  setdomainname) and ProtectKernelTunables= (_sysctl). SystemCallArchitectures=native: every
  filter covers the native architecture only, so libseccomp kills a call made through another
  one, as systemd's filter does.

Not reproduced:
- DynamicUser=, PrivateUsers=: the daemon keeps the caller's user. Switching users takes root and
  needs everything the daemon reads (interpreter, virtualenv, configuration) readable by that
  user, which a checkout does not promise (the interpreter may live under a 0700 /root).
- Whatever needs a mount namespace, i.e. root or unprivileged user namespaces, neither promised
  where tests run: ProtectSystem=strict (a read-only /), ProtectHome=, PrivateTmp=, the private
  /dev of PrivateDevices=, ProtectProc=, the read-only /proc/sys of ProtectKernelTunables=,
  ProtectControlGroups=, PrivateMounts=.
- KeyringMode=, RemoveIPC=: no effect on a daemon that uses neither keys nor System V IPC.
- StandardError=journal (the caller collects stderr) and the service manager's own work:
  Restart=, start limits, ExecReload= (the caller sends SIGHUP itself).

Before exec it checks that each filter is in force by making a call the filter must refuse
(stderr names them and the number of filters loaded), and exits 1 if one is not.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import mmap
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_KILL_PROCESS = 0x80000000  # systemd's action when SystemCallErrorNumber= is unset
SCMP_CMP_NE, SCMP_CMP_EQ, SCMP_CMP_GE, SCMP_CMP_GT, SCMP_CMP_MASKED_EQ = 1, 4, 5, 6, 7
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
O_CREAT, S_ISUID, S_ISGID = 0o100, 0o4000, 0o2000
AF_MAX = 46  # one past the highest address family Linux knows
PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 38, 24
PER_LINUX, PER_LINUX32, PERSONALITY_QUERY = 0x0000, 0x0008, 0xFFFFFFFF
SCHED_OTHER, SCHED_BATCH, SCHED_IDLE = 0, 3, 5
# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET: the kinds systemd 252 knows.
NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"
# The system-call part of settings that are mostly mount namespaces or capabilities.
DENIED_BY_SETTING = {
    "PrivateDevices": ["@raw-io"],
    "ProtectKernelModules": ["@module"],
    "ProtectKernelLogs": ["syslog"],
    "ProtectClock": ["@clock"],
    "ProtectHostname": ["sethostname", "setdomainname"],
    "ProtectKernelTunables": ["_sysctl"],
}
# (system call, index of its mode argument, index of its flags argument or None)
MODE_SETTING_CALLS = [("chmod", 1, None), ("fchmod", 1, None), ("fchmodat", 2, None),
                      ("mkdir", 1, None), ("mkdirat", 2, None), ("mknod", 1, None),
                      ("mknodat", 2, None), ("creat", 1, None), ("open", 2, 1), ("openat", 3, 2)]


def scmp_act_errno(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


class _Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int),
                ("datum_a", ctypes.c_uint64), ("datum_b", ctypes.c_uint64)]


@functools.cache
def libseccomp() -> ctypes.CDLL:
    library = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    library.seccomp_init.restype = ctypes.c_void_p
    library.seccomp_init.argtypes = [ctypes.c_uint32]
    library.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    library.seccomp_rule_add_exact_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_Cmp)]
    library.seccomp_load.argtypes = [ctypes.c_void_p]
    return library


@functools.cache
def libc() -> ctypes.CDLL:
    library = ctypes.CDLL(None, use_errno=True)
    library.syscall.restype = ctypes.c_long
    return library


def service_settings(unit_path: str) -> dict[str, list[str]]:
    """Every key of the [Service] section with its values in order (keys may repeat)."""
    settings: dict[str, list[str]] = {}
    section = None
    with open(unit_path, encoding="utf-8") as unit:
        for line in unit:
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line
            elif section == "[Service]" and "=" in line:
                key, value = line.split("=", 1)
                settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def enabled(settings: dict[str, list[str]], key: str) -> bool:
    return settings.get(key, ["no"])[-1] == "yes"


@functools.cache
def syscall_groups() -> dict[str, list[str]]:
    """systemd's named groups (@system-service, ...) and their members, nested groups included."""
    listing = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True,
                             text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    current: list[str] = []
    for line in listing.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.strip() and not line.strip().startswith("#") and line.startswith(" "):
            current.append(line.strip())
    return groups


def expand(names: list[str]) -> set[str]:
    syscalls: set[str] = set()
    for name in names:
        syscalls |= expand(syscall_groups()[name]) if name.startswith("@") else {name}
    return syscalls


def allowed_syscalls(entries: list[str]) -> set[str]:
    """What SystemCallFilter= lines (an allow list, then ~deny lists) leave callable."""
    allowed = expand([n for e in entries if not e.startswith("~") for n in e.split()])
    return allowed - expand([n for e in entries if e.startswith("~") for n in e[1:].split()])


def syscall_number(name: str) -> int | None:
    """The native number, or None for a call this architecture does not have (mmap2, ...)."""
    number = libseccomp().seccomp_syscall_resolve_name(name.encode())
    return number if number >= 0 else None


Rule = tuple  # (action, system call name, (arg, op, datum_a, datum_b)...)


def load_filter(default_action: int, rules: list[Rule]) -> None:
    """One seccomp filter for the native architecture; rules for calls it lacks are dropped."""
    context = libseccomp().seccomp_init(default_action)
    for action, name, *comparisons in rules:
        number = syscall_number(name)
        if number is None:
            continue
        array = (_Cmp * len(comparisons))(*(_Cmp(*c) for c in comparisons))
        if libseccomp().seccomp_rule_add_exact_array(context, action, number, len(comparisons), array):
            raise OSError(f"seccomp rule for {name} refused")
    if libseccomp().seccomp_load(context):
        raise OSError(ctypes.get_errno(), "seccomp_load failed")


def refuse(names, number: int = errno.EPERM, *comparisons) -> list[Rule]:
    return [(scmp_act_errno(number), name, *comparisons) for name in names]


def syscall_filter_rules(settings) -> tuple[int, list[Rule]]:
    error_number = settings.get("SystemCallErrorNumber", [None])[-1]
    refusal = scmp_act_errno(getattr(errno, error_number)) if error_number else SCMP_ACT_KILL_PROCESS
    allowed = allowed_syscalls(settings["SystemCallFilter"])
    return refusal, [(SCMP_ACT_ALLOW, name) for name in sorted(allowed)]


def memory_deny_write_execute_rules() -> list[Rule]:
    return (refuse(["mmap"], errno.EPERM, (2, SCMP_CMP_MASKED_EQ, PROT_WRITE | PROT_EXEC, PROT_WRITE | PROT_EXEC))
            + refuse(["mprotect", "pkey_mprotect"], errno.EPERM, (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
            + refuse(["shmat"], errno.EPERM, (2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC)))


def address_family_rules(names: list[str]) -> list[Rule]:
    allowed = {int(getattr(socket, name)) for entry in names for name in entry.split()}
    rules = [rule for family in sorted(set(range(AF_MAX)) - allowed)
             for rule in refuse(["socket"], errno.EAFNOSUPPORT, (0, SCMP_CMP_EQ, family, 0))]
    return rules + refuse(["socket"], errno.EAFNOSUPPORT, (0, SCMP_CMP_GE, AF_MAX, 0))


def namespace_rules() -> list[Rule]:
    rules = refuse(["clone3"], errno.ENOSYS) + refuse(["setns"])
    for flag in NAMESPACE_FLAGS:
        rules += refuse(["unshare", "clone"], errno.EPERM, (0, SCMP_CMP_MASKED_EQ, flag, flag))
    return rules


def realtime_rules() -> list[Rule]:
    """sched_setscheduler with any policy but SCHED_OTHER, SCHED_BATCH and SCHED_IDLE."""
    rules = refuse(["sched_setscheduler"], errno.EPERM, (1, SCMP_CMP_GT, SCHED_IDLE, 0))
    for policy in set(range(SCHED_IDLE)) - {SCHED_OTHER, SCHED_BATCH}:
        rules += refuse(["sched_setscheduler"], errno.EPERM, (1, SCMP_CMP_EQ, policy, 0))
    return rules


def suid_sgid_rules() -> list[Rule]:
    """Files created or chmod-ed set-user-ID or set-group-ID; openat2, whose flags hide in a struct."""
    rules = refuse(["openat2"])
    for bit in (S_ISUID, S_ISGID):
        for name, mode_index, flags_index in MODE_SETTING_CALLS:
            creating = [] if flags_index is None else [(flags_index, SCMP_CMP_MASKED_EQ, O_CREAT, O_CREAT)]
            rules += refuse([name], errno.EPERM, *creating, (mode_index, SCMP_CMP_MASKED_EQ, bit, bit))
    return rules


def locked_personality() -> int:
    current = libc().personality(ctypes.c_ulong(PERSONALITY_QUERY)) & 0xFF
    return PER_LINUX32 if current == PER_LINUX32 else PER_LINUX


def filters(settings) -> list[tuple[int, list[Rule]]]:
    """(default action, rules) of every seccomp filter the unit asks for, in systemd's order."""
    loaded = []
    if "RestrictAddressFamilies" in settings:
        loaded.append((SCMP_ACT_ALLOW, address_family_rules(settings["RestrictAddressFamilies"])))
    if enabled(settings, "MemoryDenyWriteExecute"):
        loaded.append((SCMP_ACT_ALLOW, memory_deny_write_execute_rules()))
    if enabled(settings, "RestrictRealtime"):
        loaded.append((SCMP_ACT_ALLOW, realtime_rules()))
    if enabled(settings, "RestrictSUIDSGID"):
        loaded.append((SCMP_ACT_ALLOW, suid_sgid_rules()))
    if enabled(settings, "RestrictNamespaces"):
        loaded.append((SCMP_ACT_ALLOW, namespace_rules()))
    denied = [name for key, names in DENIED_BY_SETTING.items() if enabled(settings, key) for name in names]
    if denied:
        loaded.append((SCMP_ACT_ALLOW, refuse(sorted(expand(denied)))))
    if enabled(settings, "LockPersonality"):
        loaded.append((SCMP_ACT_ALLOW, refuse(["personality"], errno.EPERM,
                                              (0, SCMP_CMP_NE, locked_personality(), 0))))
    if "SystemCallFilter" in settings:
        loaded.append(syscall_filter_rules(settings))  # last, as in systemd: it may deny the others' calls
    return loaded


def reject_what_is_not_reproduced(settings) -> None:
    """Values this script would silently get wrong: better to stop than to pretend."""
    supported = {"SystemCallArchitectures": "native", "RestrictNamespaces": "yes",
                 "CapabilityBoundingSet": "", "AmbientCapabilities": ""}
    for key, value in supported.items():
        if key in settings and settings[key][-1] != value:
            sys.exit(f"systemd_sandbox: {key}={settings[key][-1]} is not reproduced, only {key}={value}")


def enter_environment(settings, unit_name: str) -> dict[str, str]:
    """The working directory, umask and environment of a DynamicUser= service; the environment."""
    os.chdir("/")
    os.umask(int(settings.get("UMask", ["0022"])[-1], 8))
    return {"PATH": DEFAULT_PATH, "HOME": "/", "USER": unit_name, "LOGNAME": unit_name,
            "SHELL": "/usr/sbin/nologin", "INVOCATION_ID": uuid.uuid4().hex,
            "SYSTEMD_EXEC_PID": str(os.getpid())}


def drop_privileges(settings) -> None:
    # NoNewPrivileges=yes; also what lets an unprivileged process load seccomp filters at all.
    if libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
    if settings.get("CapabilityBoundingSet") == [""] and os.geteuid() == 0:
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
        for capability in range(last + 1):
            if libc().prctl(PR_CAPBSET_DROP, capability, 0, 0, 0):
                raise OSError(ctypes.get_errno(), f"cannot drop capability {capability}")


def _checked_call(result: int) -> None:
    if result == -1:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


def _memfd_set_user_id() -> None:
    descriptor = os.memfd_create("suid-check")
    try:
        os.fchmod(descriptor, 0o4700)
    finally:
        os.close(descriptor)


def self_checks(settings) -> dict[str, tuple]:
    """Per setting: a call that succeeds without the filter and the errno it must fail with."""
    filter_errno = getattr(errno, settings.get("SystemCallErrorNumber", ["EPERM"])[-1])
    checks = {
        "MemoryDenyWriteExecute": (lambda: mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC),
                                   errno.EPERM),
        "RestrictAddressFamilies": (lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW), errno.EAFNOSUPPORT),
        # raising one's own nice value needs no privilege; the unit denies @resources
        "SystemCallFilter": (lambda: os.setpriority(os.PRIO_PROCESS, 0, os.getpriority(os.PRIO_PROCESS, 0) + 1),
                             filter_errno),
        # clone3 without arguments fails with EINVAL anywhere else
        "RestrictNamespaces": (lambda: _checked_call(libc().syscall(syscall_number("clone3"), None, 0)),
                               errno.ENOSYS),
        "LockPersonality": (lambda: _checked_call(libc().personality(ctypes.c_ulong(PER_LINUX32 ^ locked_personality()))),
                            errno.EPERM),
        "RestrictSUIDSGID": (_memfd_set_user_id, errno.EPERM),
    }
    return {key: check for key, check in checks.items() if key in settings and settings[key][-1] != "no"}


def verify_in_force(settings) -> list[str]:
    """Names of the checked settings; exits 1 naming any that is not in force."""
    if "SystemCallFilter" in settings and "setpriority" in allowed_syscalls(settings["SystemCallFilter"]):
        sys.exit("systemd_sandbox: the unit allows setpriority: choose another SystemCallFilter= check")
    failures = []
    for key, (attempt, expected) in self_checks(settings).items():
        try:
            attempt()
            failures.append(f"{key} (the call succeeded)")
        except OSError as error:
            if error.errno != expected:
                failures.append(f"{key} ({errno.errorcode.get(error.errno)} instead of {errno.errorcode[expected]})")
    if failures:
        sys.exit("systemd_sandbox: not in force: " + ", ".join(failures))
    return list(self_checks(settings))


def main(argv: list[str]) -> None:
    unit_path, separator, *command = argv
    assert separator == "--" and command, __doc__
    if os.sep in command[0]:
        command[0] = os.path.abspath(command[0])  # before the working directory becomes /
    settings = service_settings(unit_path)
    reject_what_is_not_reproduced(settings)
    syscall_groups()  # runs systemd-analyze, which the filters below would not let run
    environment = enter_environment(settings, Path(unit_path).stem)
    drop_privileges(settings)
    seccomp_filters = filters(settings)
    for default_action, rules in seccomp_filters:
        load_filter(default_action, rules)
    checked = verify_in_force(settings)
    print(f"systemd_sandbox: {len(seccomp_filters)} seccomp filters; refused as the unit requires: "
          f"{' '.join(checked)}", file=sys.stderr, flush=True)
    os.execvpe(command[0], command, environment)


if __name__ == "__main__":
    main(sys.argv[1:])
