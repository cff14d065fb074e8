"""A seccomp filter for the code sandbox, hand-assembled as classic BPF (no libseccomp needed).

It refuses (EPERM) creating namespaces (`unshare` / `clone` with any CLONE_NEW* flag) and
entering them (`setns`): inside the sandbox a user namespace would let the code mount its own
tmpfs and use host memory outside RLIMIT_AS and the work-dir cap. `clone3` gets ENOSYS (its flags
live in memory a filter cannot read), so glibc falls back to `clone` for threads and fork. Also
refused: the kernel keyrings (`add_key`, `request_key`, `keyctl`: they outlive an execution) and
some kernel attack surface no test needs (io_uring, bpf, userfaultfd, perf_event_open). Syscalls
of another ABI (x32, i386 through int 0x80) kill the process. The harness installs it with
prctl(PR_SET_SECCOMP) before it runs any completion code; `probe()` checks it is in force.
"""
from __future__ import annotations

import errno
import platform
import struct

_NEW_NAMESPACES = 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x00020000
_CLONE_NEWTIME = 0x00000080  # unshare only: in clone's flags these bits are the exit signal
# machine: (AUDIT_ARCH, {name: syscall number})
_ARCHES = {
    "x86_64": (0xC000003E, {"clone": 56, "unshare": 272, "setns": 308, "clone3": 435, "add_key": 248, "request_key": 249,
                            "keyctl": 250, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
                            "bpf": 321, "userfaultfd": 323, "perf_event_open": 298}),
    "aarch64": (0xC00000B7, {"clone": 220, "unshare": 97, "setns": 268, "clone3": 435, "add_key": 217, "request_key": 218,
                             "keyctl": 219, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
                             "bpf": 280, "userfaultfd": 282, "perf_event_open": 241}),
}
_ALLOW, _KILL = 0x7FFF0000, 0x80000000
_ERRNO = 0x00050000
_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_NR, _ARCH, _ARG0 = 0, 4, 16  # offsets in struct seccomp_data (little-endian: the low half of args[0])


def program() -> bytes:
    """The filter as an array of struct sock_filter, or b"" on a machine it does not know."""
    known = _ARCHES.get(platform.machine())
    if known is None:
        return b""
    arch, nr = known
    # (code, jump-if-true label, jump-if-false label, k); labels are names of later instructions
    code: list[tuple] = [(_LD_ABS, None, None, _ARCH), (_JEQ, None, "kill", arch), (_LD_ABS, None, None, _NR)]
    if arch == 0xC000003E:
        code.append((_JGE, "kill", None, 0x40000000))  # the x32 ABI
    for name in ("setns", "add_key", "request_key", "keyctl", "io_uring_setup", "io_uring_enter", "io_uring_register",
                 "bpf", "userfaultfd", "perf_event_open"):
        code.append((_JEQ, "eperm", None, nr[name]))
    code += [(_JEQ, "enosys", None, nr["clone3"]), (_JEQ, "unshare", None, nr["unshare"]),
             (_JEQ, "clone", None, nr["clone"]), (_RET, None, None, _ALLOW),
             ("unshare", _LD_ABS, None, None, _ARG0), (_JSET, "eperm", None, _NEW_NAMESPACES | _CLONE_NEWTIME),
             (_RET, None, None, _ALLOW),
             ("clone", _LD_ABS, None, None, _ARG0), (_JSET, "eperm", None, _NEW_NAMESPACES), (_RET, None, None, _ALLOW),
             ("eperm", _RET, None, None, _ERRNO | errno.EPERM), ("enosys", _RET, None, None, _ERRNO | errno.ENOSYS),
             ("kill", _RET, None, None, _KILL)]
    labels = {ins[0]: i for i, ins in enumerate(code) if isinstance(ins[0], str)}
    out = []
    for i, ins in enumerate(code):
        op, jt, jf, k = ins[1:] if isinstance(ins[0], str) else ins
        out.append(struct.pack("=HBBI", op, labels[jt] - i - 1 if jt else 0, labels[jf] - i - 1 if jf else 0, k))
    return b"".join(out)
