"""Start a command inside the Python tool's sandbox. Standard library only: the host runs this file's
text with ``python -I -c`` (nothing the sandbox can write is ever executed), as a fresh single-threaded
process, so that everything between fork and exec is safe.

    python -I -c SOURCE STATUS_FD LIFELINE_FD   (the config, JSON, on standard input)

The config (from :mod:`gptoss.tools.python.sandbox`) says what to isolate. Each mechanism is attempted and what
actually took effect is written as JSON to the pipe ``STATUS_FD``, so the caller can report it. No file
is exchanged with the host: every path the sandboxed code can write is one the host never opens.

``LIFELINE_FD`` is the read end of a pipe whose write end only the host holds: when the host goes away
(even by SIGKILL) it reads end-of-file, and the launcher kills the whole sandbox and removes its cgroups.

Process tree (host pids)::

    launcher (this process, subreaper)  ->  reaper (pid 1 of a new pid namespace when available)  ->  command

The launcher and the reaper ignore SIGINT (an interrupt sent to the process group reaches the command);
SIGTERM is passed down. The reaper reaps orphans and exits with the command's status; every sandboxed
process has a parent-death signal, so killing the launcher takes the whole tree down.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import resource
import select
import signal
import socket
import struct
import sys
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]

RLIMITS = {
    "AS": resource.RLIMIT_AS,
    "DATA": resource.RLIMIT_DATA,
    "CPU": resource.RLIMIT_CPU,
    "NPROC": resource.RLIMIT_NPROC,
    "FSIZE": resource.RLIMIT_FSIZE,
    "NOFILE": resource.RLIMIT_NOFILE,
    "CORE": resource.RLIMIT_CORE,
}


def _check(ret: int, what: str) -> None:
    if ret != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def enc(s: str | None) -> bytes | None:
        return None if s is None else s.encode()

    _check(_libc.mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def prctl(option: int, arg: int) -> None:
    _check(_libc.prctl(option, arg, 0, 0, 0), f"prctl {option}")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def loopback_up() -> None:
    """Bring up ``lo`` in a fresh network namespace (127.0.0.1 works inside, nothing reaches outside)."""
    import fcntl

    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def _mkdirs(path: str) -> None:
    os.makedirs(path, mode=0o755, exist_ok=True)


def build_root(cfg: dict, status: dict) -> str:
    """A new root on a tmpfs: read-only views of the system folders and Python, the work folder at
    /mnt/data, the sandbox's own state folder at its usual path, private /tmp, /dev/shm and /dev."""
    root = cfg["root_dir"]
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=8m")
    # the private /tmp and /dev/shm first: folders bound below them (a Python or a venv under /tmp,
    # the sandbox's own folders) stay visible instead of being hidden by the tmpfs
    for path, size in (("/dev/shm", cfg["tmpfs_size"]), ("/tmp", cfg["tmpfs_size"])):
        _mkdirs(root + path)
        mount("tmpfs", root + path, "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={size}")
    for path in cfg["ro_paths"]:
        if not os.path.lexists(path):
            continue
        dest = root + path
        if os.path.islink(path):
            _mkdirs(os.path.dirname(dest))
            if not os.path.lexists(dest):
                os.symlink(os.readlink(path), dest)
            continue
        if os.path.isdir(path):
            _mkdirs(dest)
        else:
            _mkdirs(os.path.dirname(dest))
            open(dest, "a").close()
        mount(path, dest, None, MS_BIND | MS_REC)
        status["readonly"] = readonly_recursive(dest)
    # /dev: a few harmless devices only (its shm is mounted again on top)
    _mkdirs(root + "/dev")
    mount("tmpfs", root + "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=0755,size=64k")
    _mkdirs(root + "/dev/shm")
    mount("tmpfs", root + "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={cfg['tmpfs_size']}")
    for dev in ("null", "zero", "full", "random", "urandom", "tty"):
        if os.path.exists("/dev/" + dev):
            open(root + "/dev/" + dev, "a").close()
            mount("/dev/" + dev, root + "/dev/" + dev, None, MS_BIND)
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, root + "/dev/" + name)
    _mkdirs(root + "/proc")
    for src, dest in ((cfg["work_dir"], cfg["work_mount"]), (cfg["state_dir"], cfg["state_dir"])):
        _mkdirs(root + dest)
        mount(src, root + dest, None, MS_BIND | MS_REC)
        mount(None, root + dest, None, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NODEV)
    mount(None, root, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, "mode=0755,size=8m")
    status["filesystem"] = "private root"
    return root


AT_FDCWD = -100
AT_RECURSIVE = 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 0x1, 0x2, 0x4
SYS_MOUNT_SETATTR = 442  # the same number on every architecture (Linux 5.12)


class MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _unescape(path: str) -> str:
    """A mount point as /proc/self/mountinfo writes it (space, tab, newline and backslash as octal)."""
    import re

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), path)


def readonly_recursive(dest: str) -> str:
    """Make the bind mount at ``dest`` and every mount below it read-only (nosuid, nodev): a tmpfs or any
    other file system mounted inside a bound folder must not stay writable. ``mount_setattr`` with
    ``AT_RECURSIVE`` where the kernel has it, else a bind remount of each submount, deepest last,
    keeping the flags each already had."""
    attr = MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, 0, 0, 0)
    _libc.syscall.restype = ctypes.c_long
    ret = _libc.syscall(
        ctypes.c_long(SYS_MOUNT_SETATTR),
        ctypes.c_int(AT_FDCWD),
        dest.encode(),
        ctypes.c_uint(AT_RECURSIVE),
        ctypes.byref(attr),
        ctypes.c_size_t(ctypes.sizeof(attr)),
    )
    if ret == 0:
        return "recursive (mount_setattr)"
    flags_of = {
        "noexec": MS_NOEXEC,
        "nosuid": MS_NOSUID,
        "nodev": MS_NODEV,
        "noatime": 1024,
        "nodiratime": 2048,
        "relatime": 1 << 21,
    }
    with open("/proc/self/mountinfo") as f:
        mounts = [(_unescape(fields[4]), fields[5].split(",")) for fields in (line.split() for line in f)]
    prefix = dest.rstrip("/") + "/"
    for point, options in sorted(
        (m for m in mounts if m[0] == dest or m[0].startswith(prefix)), key=lambda m: len(m[0])
    ):
        keep = 0
        for option in options:
            keep |= flags_of.get(option, 0)
        mount(None, point, None, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | keep)
    return "recursive (each submount)"


def set_rlimits(limits: dict) -> None:
    for name, value in limits.items():
        if value is None:
            continue
        res = RLIMITS[name]
        soft, hard = (value, value) if isinstance(value, int) else value
        _, cur_hard = resource.getrlimit(res)
        if cur_hard != resource.RLIM_INFINITY and os.geteuid() != 0:
            soft, hard = min(soft, cur_hard), min(hard, cur_hard)
        resource.setrlimit(res, (soft, hard))


def join_cgroups(cgroups: list[dict] | None, status: dict) -> None:
    """Enter the cgroups the host made (their limits are already set)."""
    joined = []
    for cg in cgroups or []:
        try:
            _write(os.path.join(cg["path"], "cgroup.procs"), str(os.getpid()))
            joined.append(cg["path"])
        except OSError as exc:
            status["cgroup_error"] = f"{cg['path']}: {exc}"
    if joined:
        status["cgroups"] = joined


def join_freezer(freezer: dict | None, report: dict) -> None:
    """The reaper (and so everything under it, not the launcher) enters the cgroup frozen between calls."""
    if not freezer:
        return
    try:
        _write(os.path.join(freezer["path"], "cgroup.procs"), str(os.getpid()))
        report["freezer"] = freezer["path"]
    except OSError as exc:
        report["freezer_error"] = f"{freezer['path']}: {exc}"


def remove_cgroups(cgroups: list[dict] | None) -> None:
    """Kill what is left in our cgroups (frozen processes are thawed to die), move out of them and remove
    them, the deepest first (the host is gone)."""
    for cg in sorted(cgroups or [], key=lambda c: -len(c["path"])):
        path = cg["path"]
        try:
            _write(os.path.join(cg.get("root") or os.path.dirname(path), "cgroup.procs"), str(os.getpid()))
        except OSError:
            pass
        for _ in range(200):
            try:
                with open(os.path.join(path, "cgroup.procs")) as f:
                    pids = [int(p) for p in f.read().split()]
            except OSError:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            for name, value in (("cgroup.freeze", "0"), ("freezer.state", "THAWED")):
                try:
                    _write(os.path.join(path, name), value)
                except OSError:
                    pass
            try:
                os.rmdir(path)
                break
            except OSError:
                time.sleep(0.01)


def _read_all(fd: int, limit: int = 1 << 20) -> bytes:
    data = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return data
        data += chunk
        if len(data) > limit:
            raise ValueError("more than 1 MiB")


def main() -> None:
    status_fd, lifeline_fd = int(sys.argv[1]), int(sys.argv[2])
    cfg = json.loads(_read_all(0))
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for fd in (status_fd, lifeline_fd):
        os.set_inheritable(fd, False)  # the command never gets them
    status: dict = {
        "launcher_pid": os.getpid(),
        "filesystem": "host",
        "network": "host",
        "pid_namespace": False,
        "uid": os.getuid(),
    }
    # An interrupt aimed at the process group is for the command, not for us.
    signal.signal(signal.SIGINT, lambda *_: None)
    join_cgroups(cfg.get("cgroups"), status)
    euid = os.geteuid()
    if cfg["namespaces"] and euid != 0 and cfg.get("user_namespace", True):
        try:
            uid, gid = os.getuid(), os.getgid()
            unshare(CLONE_NEWUSER)
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"{uid} {uid} 1")
            _write("/proc/self/gid_map", f"{gid} {gid} 1")
            status["user_namespace"] = True
        except OSError as exc:
            status["user_namespace_error"] = str(exc)
    can_ns = euid == 0 or status.get("user_namespace")
    if cfg["namespaces"] and can_ns:
        try:
            unshare(CLONE_NEWNET)
            status["network"] = "none"
            try:
                loopback_up()
                status["network"] = "loopback only"
            except OSError as exc:
                status["loopback_error"] = str(exc)
        except OSError as exc:
            status["network_error"] = str(exc)
        try:
            unshare(CLONE_NEWIPC)
        except OSError:
            pass
        try:
            unshare(CLONE_NEWNS)
            build_root(cfg, status)
        except OSError as exc:
            status["filesystem_error"] = str(exc)
            status["filesystem"] = "host"
        try:
            unshare(CLONE_NEWPID)
            status["pid_namespace"] = True
        except OSError as exc:
            status["pid_namespace_error"] = str(exc)
    try:
        prctl(PR_SET_CHILD_SUBREAPER, 1)
    except OSError:
        pass
    # Pipe: the reaper tells the launcher when the sandbox is set up (or what failed).
    rfd, wfd = os.pipe()
    reaper = os.fork()
    if reaper == 0:
        os.close(rfd)
        os.close(status_fd)
        os.close(lifeline_fd)
        try:
            _reaper(cfg, status, wfd)
        except BaseException as exc:  # noqa: BLE001 - report and die: the caller reads the status
            try:
                os.write(wfd, json.dumps({"error": f"{type(exc).__name__}: {exc}"}).encode())
            finally:
                os._exit(126)
    os.close(wfd)
    data = _read_all(rfd)
    os.close(rfd)
    try:
        status.update(json.loads(data.decode() or "{}"))
    except ValueError:
        status["error"] = "sandbox setup reported nothing"
    status["reaper_pid"] = reaper
    out = json.dumps(status).encode()
    try:
        while out:
            out = out[os.write(status_fd, out) :]
    except OSError:
        pass
    os.close(status_fd)

    code = forward_and_reap(reaper, lifeline_fd)
    if code is None:  # the host is gone: so is everything it started
        try:
            os.kill(reaper, signal.SIGKILL)
        except OSError:
            pass
    kill_children()
    if code is None:
        remove_cgroups((cfg.get("cgroups") or []) + ([cfg["freezer"]] if cfg.get("freezer") else []))
    os._exit(code if code is not None else 128 + signal.SIGKILL)


def forward_and_reap(child: int, lifeline: int | None = None) -> int | None:
    """Pass SIGTERM/SIGHUP on to ``child`` and reap every process until it exits; its exit status
    (128 + signal number when a signal ended it). With ``lifeline`` (a pipe's read end): ``None`` as
    soon as that pipe reads end-of-file, i.e. the process holding its write end is gone."""

    def forward(signum, _frame):
        try:
            os.kill(child, signum)
        except OSError:
            pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGHUP, forward)
    try:
        pidfd = os.pidfd_open(child) if lifeline is not None else None
    except (AttributeError, OSError):
        pidfd = None
    try:
        while True:
            if lifeline is not None:
                try:
                    ready = select.select(
                        [lifeline] + ([pidfd] if pidfd is not None else []), [], [], 1.0 if pidfd is not None else 0.05
                    )[0]
                except InterruptedError:
                    ready = []
                if lifeline in ready:
                    try:
                        if not os.read(lifeline, 64):
                            return None
                    except OSError:
                        return None
            while True:
                try:
                    pid, st = os.waitpid(-1, 0 if lifeline is None else os.WNOHANG)
                except ChildProcessError:
                    return 1
                except InterruptedError:
                    continue
                if pid == 0:
                    break
                if pid == child:
                    code = os.waitstatus_to_exitcode(st)
                    return code if code >= 0 else 128 - code
    finally:
        if pidfd is not None:
            os.close(pidfd)


def kill_children() -> None:
    """SIGKILL whatever is left below us (orphans reparent here: we are a subreaper), until nothing is."""
    me = str(os.getpid())
    for _ in range(1000):
        found = False
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/stat") as f:
                    ppid = f.read().rsplit(")", 1)[1].split()[1]
            except (OSError, IndexError):
                continue
            if ppid == me:
                found = True
                try:
                    os.kill(int(name), signal.SIGKILL)
                except OSError:
                    pass
        while True:
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
        if not found:
            return
        time.sleep(0.01)


def _reaper(cfg: dict, status: dict, wfd: int) -> None:
    report: dict = {}
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    join_freezer(cfg.get("freezer"), report)
    if status.get("filesystem") == "private root":
        root = cfg["root_dir"]
        if status.get("pid_namespace"):
            mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        else:
            mount("/proc", root + "/proc", None, MS_BIND | MS_REC)
        os.chroot(root)
    private = status.get("filesystem") == "private root" or cfg.get("inside_bwrap", False)
    report["work_path"] = cfg["work_mount"] if private else cfg["work_dir"]
    os.chdir(report["work_path"])
    set_rlimits(cfg["rlimits"])
    uid = cfg.get("uid")
    if uid is not None and os.geteuid() == 0:
        gid = cfg.get("gid", uid)
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        report["uid"] = uid
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # cleared by the credential change above
    try:
        prctl(PR_SET_CHILD_SUBREAPER, 1)
    except OSError:
        pass
    argv, env = cfg["argv"], cfg["env"]
    child = os.fork()
    if child == 0:
        try:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.execve(argv[0], argv, env)
        except OSError as exc:
            os.write(2, f"sandbox: cannot run {argv[0]}: {exc}\n".encode())
        finally:
            os._exit(127)
    os.write(wfd, json.dumps(report).encode())
    os.close(wfd)

    os._exit(forward_and_reap(child))


if __name__ == "__main__":
    main()
