"""Run a command under the seccomp part of a unit's sandbox, without systemd as PID 1.

    python tests/systemd_sandbox.py systemd/smtpmon.service -- COMMAND [ARG...]

A unit cannot be started where systemd is not the init process (containers, CI), but the
restrictions most likely to break a Python daemon are plain seccomp filters, which any
process may load on itself once it has set no_new_privs. This script reads them from the
unit and loads them the way systemd 252 does, then execs the command:

- SystemCallFilter= (groups expanded by `systemd-analyze syscall-filter`) with
  SystemCallErrorNumber=, on the native architecture only (SystemCallArchitectures=native);
- MemoryDenyWriteExecute=yes: mmap with PROT_WRITE|PROT_EXEC, mprotect/pkey_mprotect with
  PROT_EXEC and shmat with SHM_EXEC fail with EPERM;
- RestrictAddressFamilies=: socket() with any other family fails with EAFNOSUPPORT.

Mount namespaces, users and the rest need privileges and are not reproduced.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import socket
import subprocess
import sys

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_KILL_PROCESS = 0x80000000  # systemd's action when SystemCallErrorNumber= is unset
SCMP_CMP_GE, SCMP_CMP_MASKED_EQ = 5, 7
PROT_WRITE, PROT_EXEC, SHM_EXEC = 0x2, 0x4, 0o100000
AF_MAX = 46  # one past the highest address family Linux knows
PR_SET_NO_NEW_PRIVS = 38


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


def expand(names: list[str], groups: dict[str, list[str]]) -> set[str]:
    syscalls: set[str] = set()
    for name in names:
        syscalls |= expand(groups[name], groups) if name.startswith("@") else {name}
    return syscalls


def syscall_number(name: str) -> int | None:
    """The native number, or None for a call this architecture does not have (mmap2, ...)."""
    number = libseccomp().seccomp_syscall_resolve_name(name.encode())
    return number if number >= 0 else None


def _rule(context, action: int, name: str, *comparisons: tuple[int, int, int, int]) -> None:
    number = syscall_number(name)
    if number is None:
        return
    array = (_Cmp * len(comparisons))(*(_Cmp(*c) for c in comparisons))
    if libseccomp().seccomp_rule_add_exact_array(context, action, number, len(comparisons), array):
        raise OSError(f"seccomp rule for {name} refused")


def _load(context) -> None:
    if libseccomp().seccomp_load(context):
        raise OSError(ctypes.get_errno(), "seccomp_load failed")


def load_syscall_filter(entries: list[str], error_number: str | None) -> None:
    groups = syscall_groups()
    allowed = expand([n for e in entries if not e.startswith("~") for n in e.split()], groups)
    denied = expand([n for e in entries if e.startswith("~") for n in e[1:].split()], groups)
    refusal = scmp_act_errno(getattr(errno, error_number)) if error_number else SCMP_ACT_KILL_PROCESS
    context = libseccomp().seccomp_init(refusal)
    for name in sorted(allowed - denied):
        _rule(context, SCMP_ACT_ALLOW, name)
    _load(context)


def load_memory_deny_write_execute() -> None:
    context = libseccomp().seccomp_init(SCMP_ACT_ALLOW)
    refuse = scmp_act_errno(errno.EPERM)
    _rule(context, refuse, "mmap", (2, SCMP_CMP_MASKED_EQ, PROT_WRITE | PROT_EXEC, PROT_WRITE | PROT_EXEC))
    for name in ("mprotect", "pkey_mprotect"):
        _rule(context, refuse, name, (2, SCMP_CMP_MASKED_EQ, PROT_EXEC, PROT_EXEC))
    _rule(context, refuse, "shmat", (2, SCMP_CMP_MASKED_EQ, SHM_EXEC, SHM_EXEC))
    _load(context)


def load_address_families(names: list[str]) -> None:
    allowed = {int(getattr(socket, name)) for entry in names for name in entry.split()}
    context = libseccomp().seccomp_init(SCMP_ACT_ALLOW)
    refuse = scmp_act_errno(errno.EAFNOSUPPORT)
    for family in set(range(AF_MAX)) - allowed:
        _rule(context, refuse, "socket", (0, SCMP_CMP_MASKED_EQ, 0xFFFFFFFF, family))
    _rule(context, refuse, "socket", (0, SCMP_CMP_GE, AF_MAX, 0))
    _load(context)


def main(argv: list[str]) -> None:
    unit_path, separator, *command = argv
    assert separator == "--" and command, __doc__
    settings = service_settings(unit_path)
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
        raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
    if settings.get("MemoryDenyWriteExecute", ["no"])[-1] == "yes":
        load_memory_deny_write_execute()
    if "RestrictAddressFamilies" in settings:
        load_address_families(settings["RestrictAddressFamilies"])
    if "SystemCallFilter" in settings:
        load_syscall_filter(settings["SystemCallFilter"], settings.get("SystemCallErrorNumber", [None])[-1])
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
