"""Kernel confinement of the sandboxed worker: Landlock, seccomp-bpf, no capabilities.

The worker (``_worker_main``) calls :func:`confine` on itself after reading its inputs and
before importing any bundle code; the node calls :func:`kernel_support` to say, at start,
what this kernel offers. This module needs only the standard library (the worker loads it
by file path, without importing :mod:`biofed.node`).

Security notes
--------------
Threat: approved but hostile (or compromised) bundle code sending data out of band, running
other programs, multiplying itself, or reaching the node process and the host, all as the
node's OS user — which is often root. Three independent kernel mechanisms, each applied to
the worker only, in this order:

1. **``PR_SET_NO_NEW_PRIVS``** (``prctl(2)``), required by both filters below: no ``execve``
   can ever grant privileges again (set-uid bits, file capabilities are ignored).
2. **Landlock** (``landlock(7)``; Linux ≥ 5.13, ABI 1-7): the file system is read-only
   outside the worker's own folder (the Python installation, ``sys.path``, system library
   folders, ``/dev/null``, ``/dev/urandom``); *no* path carries
   ``LANDLOCK_ACCESS_FS_EXECUTE``, so ``execve`` of any file is refused (shared libraries
   are mapped, not executed, and still load); device, socket and FIFO nodes cannot be
   made, even in its own folder (a root worker could otherwise ``mknod`` the disk and read
   it raw). ABI ≥ 4: TCP bind and connect denied; ABI ≥ 6: signals and abstract UNIX
   sockets scoped to the worker.
3. **seccomp-bpf** (``seccomp(2)``, ``SECCOMP_SET_MODE_FILTER`` with ``TSYNC``), default
   allow with a deny list, errors rather than kills so bundle code sees a plain
   ``PermissionError``:

   * *network of any kind*: ``socket`` and ``socketpair`` (every family: ``AF_INET``/
     ``AF_INET6`` TCP and UDP, raw, ``AF_UNIX``, ``AF_NETLINK``, ``AF_PACKET``…),
     ``connect``, ``bind``, ``listen``, ``accept``/``accept4``, and ``io_uring_*`` (whose
     operations would open sockets past the filter). The worker holds no socket to begin
     with (``close_fds``, stdin is ``/dev/null``, stdout/stderr a log file), so it can
     send nothing;
   * *other programs*: ``execve``, ``execveat``;
   * *other processes*: ``fork``, ``vfork``, ``clone`` without ``CLONE_THREAD``;
     ``clone3`` answers ``ENOSYS`` (its flags sit in memory a filter cannot read) so libc
     falls back to ``clone``, where threads are allowed. The worker stays one process;
   * *reaching other processes*: ``ptrace``, ``process_vm_readv``/``writev``,
     ``pidfd_open``/``getfd``/``send_signal``, ``tkill``, and ``kill``/``tgkill``/
     ``rt_(tg)sigqueueinfo`` aimed at any process but itself;
   * *kernel surface* no training code needs: ``bpf``, ``perf_event_open``,
     ``userfaultfd``, key management, mounts and namespaces, modules, ``kexec``,
     ``reboot``, ``swapon``, ``mknod``, ``open_by_handle_at``, ``iopl``/``ioperm``, clocks.

   A syscall of another ABI (32-bit ``int 0x80`` on x86-64, x32) kills the worker
   (libseccomp's bad-architecture action), so ``socketcall`` cannot go around the list.

Last, a root worker gives up every capability (``capset(2)`` to empty sets and the
bounding set cleared), so the kernel treats it as an unprivileged process of uid 0.

Why ctypes over the system's ``libseccomp.so.2`` rather than a PyPI binding or hand-written
BPF: libseccomp is the maintained reference implementation (systemd, container runtimes and
Debian's apt itself use it, so it is on every Debian/Ubuntu host); it resolves syscall
numbers per architecture, adds the architecture and x32 checks and orders the BPF program,
which hand-written BPF would have to get right per CPU; the PyPI bindings (``pyseccomp``)
are themselves thin ctypes layers over the same library, with no releases in years, so
they would add a dependency without removing the system one. The five C functions used
here are the library's stable v2 API. Where the library or the kernel is missing,
:func:`confine` reports seccomp as unavailable, and the node refuses to run bundles unless
its operator opted out (``[sandbox] allow_weaker`` in ``node.toml``).

Limits (residual risks): threads are not counted — ``RLIMIT_NPROC`` counts every task of
the real uid (the node's own threads too) and root ignores it, so the number of threads is
bounded by the worker's memory limit (each thread reserves its stack) and its CPU limit
counts all of them; BLAS/OpenMP pools are pinned to one thread by the parent. Files the
worker may read (the Python installation, ``sys.path``) and side channels (timing, CPU,
memory use) remain.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import sys
from collections.abc import Callable, Iterable

#: The confinement mechanisms an operator may knowingly do without (``allow_weaker``).
MECHANISMS = ("landlock", "seccomp")

# -- Landlock (include/uapi/linux/landlock.h); these syscall numbers are the same on every
# architecture that has them (x86-64, arm64, riscv…).
_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS, _PR_GET_SECCOMP, _PR_CAPBSET_DROP = 38, 21, 24
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL = 47, 4
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1, 2, 4, 8
_FS_MAKE_CHAR, _FS_MAKE_SOCK, _FS_MAKE_FIFO, _FS_MAKE_BLOCK = 1 << 6, 1 << 9, 1 << 10, 1 << 11
_FS_TRUNCATE, _FS_IOCTL_DEV = 1 << 14, 1 << 15
_FS_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
_READ_ONLY = _FS_READ_FILE | _FS_READ_DIR  # no EXECUTE anywhere: execve is refused
_NEVER = _FS_EXECUTE | _FS_MAKE_CHAR | _FS_MAKE_BLOCK | _FS_MAKE_SOCK | _FS_MAKE_FIFO
_NET_BIND_TCP, _NET_CONNECT_TCP = 1, 2
_SCOPE_ABSTRACT_UNIX, _SCOPE_SIGNAL = 1, 2
_SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")
_SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime")

# -- libseccomp (seccomp.h): actions, attributes, comparisons.
_ACT_ALLOW = 0x7FFF0000
_ATTR_CTL_NNP, _ATTR_CTL_TSYNC = 3, 4
_CMP_NE, _CMP_EQ, _CMP_MASKED_EQ = 1, 4, 7
_CLONE_THREAD = 0x00010000
_DENIED = (
    # network of any kind
    "socket", "socketpair", "connect", "bind", "listen", "accept", "accept4",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # other programs and processes
    "execve", "execveat", "fork", "vfork",
    # other processes' memory, descriptors and signals
    "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_open", "pidfd_getfd",
    "pidfd_send_signal", "tkill",
    # kernel surface
    "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key",
    "mount", "umount2", "pivot_root", "chroot", "unshare", "setns", "fsopen", "fsmount",
    "fsconfig", "fspick", "open_tree", "move_mount", "mount_setattr",
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "mknod", "mknodat", "open_by_handle_at",
    "name_to_handle_at", "iopl", "ioperm", "acct", "quotactl", "syslog",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "sethostname", "setdomainname", "vhangup", "uselib",
)  # fmt: skip
# Syscalls libseccomp must know for the filter to mean anything (a library that predates
# one of them would silently leave it open).
_MUST_KNOW = frozenset(
    ("socket", "socketpair", "connect", "execve", "execveat", "clone", "clone3", "fork",
     "vfork", "io_uring_setup", "io_uring_enter", "io_uring_register", "ptrace", "kill")
)  # fmt: skip
# Signals only to itself: denied where the first argument (pid / tgid) is another process.
_OWN_PID_ONLY = ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo")


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def _errname(code: int) -> str:
    return errno.errorcode.get(code, str(code))


def no_new_privs() -> None:
    """Set ``PR_SET_NO_NEW_PRIVS`` on this process (irreversible, inherited)."""
    if _libc().prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")


# -- Landlock ------------------------------------------------------------------------------
class _RulesetAttr(ctypes.Structure):
    _fields_ = [
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    ]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def landlock_abi() -> int | str:
    """The kernel's Landlock ABI version, or the reason it has none (``"ENOSYS"``…)."""
    libc = _libc()
    abi = libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), _CREATE_RULESET_VERSION)
    return int(abi) if abi >= 0 else _errname(ctypes.get_errno())


def _handled_fs(abi: int) -> int:
    mask = (1 << 13) - 1
    if abi >= 2:
        mask |= 1 << 13  # REFER
    if abi >= 3:
        mask |= _FS_TRUNCATE
    if abi >= 5:
        mask |= _FS_IOCTL_DEV
    return mask


def _read_paths() -> list[str]:
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    paths.update(p for p in sys.path if p)
    paths.update(_SYSTEM_DIRS)
    return sorted(p for p in paths if os.path.isdir(p))


def apply_landlock(workdir: str) -> str | None:
    """Confine this process's file system (and TCP, signals) with Landlock.

    Returns ``"landlock-abi-N"``, or None where the kernel offers no Landlock. Raises
    OSError if the kernel offers it but a step fails (never half-applied silently).
    Expects ``PR_SET_NO_NEW_PRIVS`` to be set already.
    """
    abi = landlock_abi()
    if not isinstance(abi, int):
        return None
    libc = _libc()
    handled = _handled_fs(abi)
    net = _NET_BIND_TCP | _NET_CONNECT_TCP if abi >= 4 else 0
    scoped = _SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL if abi >= 6 else 0
    attr = _RulesetAttr(handled, net, scoped)
    size = 8 if abi < 4 else 16 if abi < 6 else 24
    ruleset = libc.syscall(_SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    try:
        rules = [(p, _READ_ONLY) for p in _read_paths()]
        rules += [(p, _FS_READ_FILE) for p in _SYSTEM_FILES]
        rules += [("/dev/null", _FS_READ_FILE | _FS_WRITE_FILE), ("/dev/urandom", _FS_READ_FILE)]
        rules.append((workdir, handled & ~_NEVER))
        for path, access in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                if not os.path.isdir(path):
                    access &= _FS_FILE_RIGHTS
                rule = _PathBeneathAttr(access & handled, fd)
                if libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, ctypes.byref(rule), 0):
                    raise OSError(ctypes.get_errno(), f"landlock_add_rule({path})")
            finally:
                os.close(fd)
        if libc.syscall(_SYS_RESTRICT_SELF, ruleset, 0):
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        os.close(ruleset)
    return f"landlock-abi-{abi}"


# -- seccomp-bpf through libseccomp -----------------------------------------------------------
class _ArgCmp(ctypes.Structure):
    """``struct scmp_arg_cmp``."""

    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _libseccomp() -> ctypes.CDLL:
    """The system's libseccomp (v2 API); OSError where it cannot be loaded."""
    try:
        return ctypes.CDLL("libseccomp.so.2", use_errno=True)
    except OSError:
        name = ctypes.util.find_library("seccomp")
        if name is None:
            raise OSError(errno.ENOENT, "libseccomp.so.2 not found") from None
        return ctypes.CDLL(name, use_errno=True)


class SeccompFilter:
    """A libseccomp filter context (default: allow) to which deny rules are added.

    Raises OSError where ``libseccomp.so.2`` cannot be loaded or a call fails.
    """

    def __init__(self) -> None:
        lib = _libseccomp()
        lib.seccomp_init.restype = ctypes.c_void_p
        lib.seccomp_init.argtypes = [ctypes.c_uint32]
        lib.seccomp_rule_add_array.argtypes = [
            ctypes.c_void_p,
            ctypes.c_uint32,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.POINTER(_ArgCmp),
        ]
        lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
        lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
        lib.seccomp_load.argtypes = [ctypes.c_void_p]
        lib.seccomp_release.argtypes = [ctypes.c_void_p]
        self._lib = lib
        self._ctx = lib.seccomp_init(_ACT_ALLOW)
        if not self._ctx:
            raise OSError(errno.ENOMEM, "seccomp_init")
        self._check(lib.seccomp_attr_set(self._ctx, _ATTR_CTL_NNP, 1), "seccomp_attr_set(NNP)")

    @staticmethod
    def _check(rc: int, what: str) -> None:
        if rc < 0:
            raise OSError(-rc, f"{what}: {os.strerror(-rc)}")

    def _number(self, name: str) -> int | None:
        """The syscall's number here; None where this architecture lacks it (``fork`` on
        arm64). OSError where libseccomp does not know a syscall the worker must be denied
        (a library older than the kernel's ``clone3``, ``io_uring``…)."""
        number = int(self._lib.seccomp_syscall_resolve_name(name.encode()))
        if number == -1:  # __NR_SCMP_ERROR: not in libseccomp's tables at all
            if name in _MUST_KNOW:
                raise OSError(errno.ENOSYS, f"libseccomp is too old to know {name}")
            return None
        return number if number >= 0 else None  # < -1: a pseudo-syscall, not on this arch

    def deny(
        self, names: Iterable[str], code: int = errno.EPERM, *conditions: tuple[int, int, int]
    ) -> None:
        """Make each named syscall fail with ``code`` (where all ``(arg, op, value)``
        conditions hold, ``op`` one of ``_CMP_*``); names this architecture lacks are
        skipped."""
        cmps = (_ArgCmp * max(1, len(conditions)))()
        for i, (arg, op, value) in enumerate(conditions):
            # MASKED_EQ holds where (arg & value) == 0; the others where arg <op> value.
            cmps[i] = _ArgCmp(arg, op, value, 0)
        for name in names:
            number = self._number(name)
            if number is None:
                continue
            rc = self._lib.seccomp_rule_add_array(
                self._ctx, _errno_action(code), number, len(conditions), cmps
            )
            self._check(rc, f"seccomp_rule_add({name})")

    def load(self) -> None:
        """Install the filter on this process and all its threads (``TSYNC``)."""
        try:
            self._check(
                self._lib.seccomp_attr_set(self._ctx, _ATTR_CTL_TSYNC, 1), "seccomp_attr_set(TSYNC)"
            )
            self._check(self._lib.seccomp_load(self._ctx), "seccomp_load")
        finally:
            self._lib.seccomp_release(self._ctx)
            self._ctx = None


def seccomp_support() -> str | None:
    """Why seccomp filters cannot be used here, or None where they can."""
    if _libc().prctl(_PR_GET_SECCOMP, 0, 0, 0, 0) < 0:
        return f"the kernel has no seccomp ({_errname(ctypes.get_errno())})"
    try:
        _libseccomp()
    except OSError as exc:
        return f"libseccomp is not usable ({exc})"
    return None


def apply_seccomp() -> str | None:
    """Install the worker's seccomp-bpf filter (see the module docstring).

    Returns ``"seccomp-bpf"``, or None where the kernel or libseccomp cannot; raises
    OSError if a step fails once the filter is being built.
    """
    if seccomp_support() is not None:
        return None
    own = os.getpid()
    flt = SeccompFilter()
    flt.deny(_DENIED)
    flt.deny(("clone3",), errno.ENOSYS)
    flt.deny(("clone",), errno.EPERM, (0, _CMP_MASKED_EQ, _CLONE_THREAD))  # a new process
    flt.deny(_OWN_PID_ONLY, errno.EPERM, (0, _CMP_NE, own))
    flt.load()
    return "seccomp-bpf"


# -- capabilities ----------------------------------------------------------------------------
class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def drop_capabilities() -> str:
    """Give up every capability (bounding, ambient, effective, permitted, inheritable)."""
    libc = _libc()
    try:
        with open("/proc/sys/kernel/cap_last_cap", encoding="ascii") as handle:
            last = int(handle.read())
    except (OSError, ValueError):
        last = 63
    for cap in range(last + 1):
        libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0)  # EPERM without CAP_SETPCAP: none to drop
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    if libc.capset(ctypes.byref(header), data):
        raise OSError(ctypes.get_errno(), "capset")
    return "no capabilities"


# -- the whole confinement -------------------------------------------------------------------
def confine(workdir: str, allow_weaker: Iterable[str] = ()) -> tuple[str, str | None]:
    """Apply every mechanism to this process; return (what holds, refusal or None).

    The refusal names a mechanism the kernel (or libseccomp) cannot apply and that
    ``allow_weaker`` does not excuse; the caller must then run no bundle code. What holds
    reads e.g. ``"landlock-abi-7, seccomp-bpf, no capabilities"``.
    """
    allowed = set(allow_weaker)
    no_new_privs()
    applied: list[str] = []
    steps: tuple[tuple[str, str, Callable[[], str | None]], ...] = (
        ("landlock", "Landlock", lambda: apply_landlock(workdir)),
        ("seccomp", "seccomp filters", apply_seccomp),
    )
    for name, title, step in steps:
        try:
            done, reason = step(), ""
        except OSError as exc:  # nothing of this mechanism was applied: each step is atomic
            done, reason = None, str(exc)
        if done is not None:
            applied.append(done)
            continue
        if name not in allowed:
            reason = reason or _missing(name)
            return ", ".join(applied) or "none", (
                f"this host cannot apply {title} ({reason}); set [sandbox] allow_weaker = "
                f'["{name}"] in node.toml to run bundles without them'
            )
        applied.append(f"no {name} (allowed)")
    applied.append(drop_capabilities())
    return ", ".join(applied), None


def _missing(name: str) -> str:
    if name == "landlock":
        return f"the kernel has no Landlock: {landlock_abi()}"
    return seccomp_support() or "unavailable"


def kernel_support() -> dict[str, str]:
    """What this kernel and host offer the worker: mechanism → ``"yes (…)"`` or ``"no (…)"``."""
    abi = landlock_abi()
    seccomp = seccomp_support()
    return {
        "landlock": f"yes (ABI {abi})" if isinstance(abi, int) else f"no ({abi})",
        "seccomp": "yes" if seccomp is None else f"no ({seccomp})",
    }
