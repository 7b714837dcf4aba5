"""The Python tool's sandbox, host side: limits, isolation, the process tree, and cleaning it up.

What is isolated depends on what the operating system allows (see README, "Tools"):

- Always: resource limits (address space, CPU time, file size, open files, no core dumps), a private
  working folder, a minimal environment (no API keys or tokens of the parent), every process the code
  starts killed when the call ends, the whole tree killed with the conversation.
- Linux as root (or with unprivileged user namespaces): own network namespace (loopback only), own mount
  namespace with a private read-only root (system folders and Python, read-only; the working folder at
  ``/mnt/data``; private ``/tmp``), own PID namespace; as root also an unprivileged user id of its own, so
  the process limit (RLIMIT_NPROC) holds, and a ``pids`` cgroup where one can be created.
- As root, the whole conversation is bounded too: a memory cgroup (processes, ``/tmp``, ``/dev/shm``,
  files it writes on tmpfs), the same one across kernel restarts, and tmpfs of a given size for its own
  ``/mnt/data`` and its home; all sandboxes of the process sit in one parent cgroup, which can hold a
  memory budget for all of them (``SandboxLimits.sandboxes_memory_bytes``).
- Otherwise, bubblewrap (``bwrap``) when it is installed and works, or rlimits alone.
- Between calls the whole sandbox is frozen (its freezer cgroup; without one, SIGSTOP to each process of
  the tree): nothing it left running uses CPU, starts a process or wakes another.

Nothing the sandboxed code can write is ever opened, followed, chowned or executed by the host. The
conversation's folder (``base``, made by the caller, not writable by the sandbox) holds:

- ``h/``: the host's only (mode 0700): the private root's mount point and the links that pin the
  kernel's sockets. The launcher is run from this package's source text (``python -c``), its config
  goes in on a pipe, its status and output come back on pipes.
- ``c/``: written by the host, read-only to the sandbox: the kernel's connection file.
- ``s/``: the sandbox's own (``home``, the kernel's sockets). The host only makes it, hands it over
  with ``fchown`` on descriptors opened without following links, and opens the sockets there with
  ``O_PATH | O_NOFOLLOW`` after checking they are sockets of the sandbox's user.

Every sandbox process dies with the host: the launcher holds the read end of a pipe only the host can
write; when it reads end-of-file (the host exited, even by SIGKILL) it kills the tree and removes the
conversation's cgroups. Folders and cgroups left by a host that died are removed by the next one
(:func:`sweep_stale`).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import select
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path

from gptoss.tools.python.cgroups import (
    CGROUP_ROOT,
    _cgroups_for,
    _empty_cgroup,
    _oom_kills,
    _remove_cgroup,
    _set_frozen,
)
from gptoss.tools.python.limits import SandboxLimits, _tmpfs_bytes
from gptoss.tools.python.mounts import _mounts_under, mount_tmpfs, unmount
from gptoss.tools.python.processes import (
    _CLK_TCK,
    STALE_RE,
    _argv,
    _host_gone,
    _stat_of,
    descendants,
    host_tag,
    process_table,
    tasks_of_uid,
)

log = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("launcher.py")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_STATUS_LIMIT = 1 << 16
WORK_MOUNT = "/mnt/data"


class SandboxError(RuntimeError):
    pass


def _world_accessible(path: str) -> bool:
    """Can an unrelated unprivileged user reach (and read) ``path``?"""
    p = Path(path).resolve()
    for part in [*reversed(p.parents), p]:
        try:
            mode = part.stat().st_mode
        except OSError:
            return False
        if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
            return False
    try:
        mode = p.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IXOTH if stat.S_ISDIR(mode) else stat.S_IROTH))


def python_paths() -> list[str]:
    """Folders the kernel's Python needs (read-only inside the sandbox)."""
    import importlib.util

    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(os.path.realpath(sys.executable))}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        paths.add(sysconfig.get_paths()[key])
    for mod in ("ipykernel", "IPython", "zmq", "jupyter_client", "jupyter_core", "traitlets", "tornado", "numpy"):
        spec = importlib.util.find_spec(mod)
        if spec and spec.origin:
            paths.add(str(Path(spec.origin).resolve().parent.parent))
    return sorted(p for p in paths if p and os.path.isdir(p))


SYSTEM_PATHS = ["/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32", "/etc"]


def _dedupe(paths: list[str]) -> list[str]:
    """Drop paths inside another one of the list (symlinks are kept: they are recreated, not bound)."""
    out: list[str] = []
    for p in sorted(set(paths), key=len):
        if any(p.startswith(q.rstrip("/") + "/") for q in out if not os.path.islink(q)):
            continue
        out.append(p)
    return out


def sweep_stale(tmp: str | None = None) -> list[str]:
    """Remove what a host that died (e.g. by SIGKILL) left behind: folders named ``gptoss-py-HOST-*`` and
    ``gptoss-data-HOST-*`` with the tmpfs mounted on them, and cgroups named ``gptoss-python-HOST-*`` or
    ``gptoss-sandboxes-HOST`` with every process still in them (thawed and killed), where HOST (pid and
    start time) no longer runs. Only names this module makes are touched, and a process only through such
    a cgroup: whatever the code started stays in its cgroup, whatever it does. Returns what was removed."""
    removed = []
    tmp = tmp or tempfile.gettempdir()
    try:
        names = os.listdir(tmp)
    except OSError:
        names = []
    if os.geteuid() == 0:  # first the processes (they may hold the mounts and folders)
        for parent in [CGROUP_ROOT] + [os.path.join(CGROUP_ROOT, c) for c in ("pids", "memory", "freezer")]:
            try:
                cgroups = os.listdir(parent)
            except OSError:
                continue
            for name in cgroups:
                m = STALE_RE.match(name)
                path = os.path.join(parent, name)
                if (
                    m
                    and name.startswith(("gptoss-python-", "gptoss-sandboxes-"))
                    and _host_gone(m)
                    and os.path.isdir(path)
                    and _remove_cgroup(path, tries=20)
                ):
                    removed.append(path)
    for name in names:
        m = STALE_RE.match(name)
        if m and _host_gone(m):
            path = os.path.join(tmp, name)
            try:
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    if os.geteuid() == 0:
                        for point in _mounts_under(path):  # the conversation's sized /mnt/data and home
                            unmount(point)
                    shutil.rmtree(path, ignore_errors=True)  # never follows links (fd-based on Linux)
                    removed.append(path)
            except OSError:
                pass
    return removed


def _open_dir(path: Path | str, dir_fd: int | None = None) -> int:
    return os.open(path, _DIR_FLAGS, dir_fd=dir_fd)


def _own_subdir(parent_fd: int, name: str) -> int:
    """An open descriptor on the folder ``name`` inside ``parent_fd``, made if missing. Whatever the sandbox
    put there instead (a link, a FIFO, a file) is removed, never followed."""
    for _ in range(3):
        try:
            os.mkdir(name, 0o700, dir_fd=parent_fd)
        except FileExistsError:
            pass
        try:
            return _open_dir(name, dir_fd=parent_fd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            os.unlink(name, dir_fd=parent_fd)
    raise SandboxError(f"cannot make the sandbox's folder {name!r}")


def _read_pipe(fd: int, deadline: float, limit: int) -> bytes | None:
    """Everything written to a pipe until end-of-file, at most ``limit`` bytes; None past ``deadline``."""
    data = b""
    while len(data) <= limit:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 65536)
        if not chunk:
            return data
        data += chunk
    return data[:limit]


class _OutputTail(threading.Thread):
    """Drains the launcher's and the kernel's stdout/stderr (a pipe), keeping only the last bytes."""

    def __init__(self, stream, keep: int = 4096):
        super().__init__(daemon=True, name="gptoss-sandbox-output")
        self.stream, self.keep, self.tail = stream, keep, b""

    def run(self) -> None:
        try:
            while chunk := self.stream.read1(65536):
                self.tail = (self.tail + chunk)[-self.keep :]
        except (OSError, ValueError):
            pass
        finally:
            self.stream.close()

    def text(self, n: int) -> str:
        self.join(0.5)
        return self.tail[-n:].decode(errors="replace").strip()


def bwrap_works() -> bool:
    exe = shutil.which("bwrap")
    if not exe:
        return False
    try:
        r = subprocess.run(
            [exe, "--unshare-net", "--unshare-pid", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "true"],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


class Sandbox:
    """One sandboxed command (the kernel) with its working folder and its private folders under ``base_dir``
    (see the module docstring: ``h/`` the host's, ``c/`` read-only to the sandbox, ``s/`` the sandbox's).

    ``isolation``: ``"auto"`` (everything the system allows, see the module docstring), ``"bwrap"``
    (bubblewrap for the namespaces), or ``"none"`` (limits and process cleanup only).
    """

    def __init__(
        self,
        work_dir: Path,
        base_dir: Path,
        limits: SandboxLimits,
        isolation: str = "auto",
        marker: str = "ipykernel_launcher",
        own_work_dir: bool = False,
    ):
        if isolation not in ("auto", "bwrap", "none"):
            raise SandboxError(f"isolation: expected auto, bwrap or none, found {isolation!r}")
        self.work_dir = Path(work_dir)
        self.base_dir = Path(base_dir)
        self.state_dir = self.base_dir / "s"  # the sandbox's own: home, the kernel's sockets
        self.shared_dir = self.base_dir / "c"  # the host's, read-only to the sandbox
        self.host_dir = self.base_dir / "h"  # the host's only
        self.limits = limits
        self.isolation = isolation
        self.marker = marker
        self.own_work_dir = own_work_dir  # made for the conversation (and removed with it): its size can be bounded
        self.disk_mounted = False
        self.state_mounted = False
        self.process: subprocess.Popen | None = None
        self.status: dict = {}
        self.cgroups: list[dict] = []  # the conversation's, kept across kernel restarts (its tmpfs pages stay charged)
        self.freezer: dict | None = None  # the cgroup frozen between calls
        self._cgroups_made = False
        self._lock = threading.RLock()  # launching, killing and closing, from worker threads
        self.closed = False
        self.uid: int | None = None
        self.drop_uid = os.geteuid() == 0
        self._kernel_pid: int | None = None
        self._kernel_start = 0  # its start time: a pid reused after it died is not taken for it
        self._work_owner: tuple[int, int, int] | None = None
        self._lifeline: int | None = None
        self._output: _OutputTail | None = None
        self._pinned: list[int] = []
        self.notes: list[str] = []

    # ------------------------------------------------------------------ launching
    def _pick_uid(self) -> int:
        used = set()
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    used.add(os.stat(f"/proc/{name}").st_uid)
                except OSError:
                    pass
        while True:
            uid = random.randrange(1_000_000, 2_000_000_000)
            if uid not in used:
                return uid

    def _prepare_dirs(self, uid: int | None) -> None:
        """The folders exist; ``s/`` and its ``home`` belong to the sandbox's user when it has one, and the
        working folder is lent to its group (``root:uid``, mode 0770: the code can write in it but cannot
        rename or replace the folder itself; the host's files in it stay read-only to the code). Every
        change of owner goes through a descriptor opened without following links."""
        self.base_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base_dir, 0o711)
        for d, mode in ((self.host_dir, 0o700), (self.shared_dir, 0o755)):
            d.mkdir(exist_ok=True)
            os.chmod(d, mode)
        (self.host_dir / "root").mkdir(exist_ok=True)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        if (
            self.own_work_dir
            and self.limits.disk_bytes
            and os.geteuid() == 0
            and not self.disk_mounted
            and not any(self.work_dir.iterdir())
        ):
            try:
                mount_tmpfs(str(self.work_dir), self.limits.disk_bytes)
                self.disk_mounted = True
            except OSError as exc:
                self.notes.append(f"no bound on the conversation's files in all: {exc}")
        base = _open_dir(self.base_dir)
        try:
            os.close(_own_subdir(base, "s"))
        finally:
            os.close(base)
        if os.geteuid() == 0 and not self.state_mounted:
            # its home is bounded like its /tmp: a tmpfs of tmp_size (``s`` sits in our own folder: no link here)
            try:
                mount_tmpfs(str(self.state_dir), _tmpfs_bytes(self.limits.tmp_size))
                self.state_mounted = True
            except (OSError, ValueError) as exc:
                self.notes.append(f"the sandbox's home is not bounded in all: {exc}")
        base = _open_dir(self.base_dir)
        try:
            sfd = _own_subdir(base, "s")
        finally:
            os.close(base)
        try:
            home = _own_subdir(sfd, "home")
            try:
                if uid is not None:
                    for fd in (sfd, home):
                        os.fchown(fd, uid, uid)
                        os.fchmod(fd, 0o700)
            finally:
                os.close(home)
            for name in os.listdir(sfd):  # the sockets of an earlier kernel (unlink never follows)
                if re.fullmatch(r"k-\d+", name):
                    try:
                        os.unlink(name, dir_fd=sfd)
                    except OSError:
                        pass
        finally:
            os.close(sfd)
        if uid is not None:
            wfd = _open_dir(self.work_dir)
            try:
                st = os.fstat(wfd)
                if self._work_owner is None:
                    self._work_owner = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
                os.fchown(wfd, self._work_owner[0], uid)
                os.fchmod(wfd, 0o770)
            finally:
                os.close(wfd)

    def close(self) -> None:
        """Kill the tree, remove the conversation's cgroups and give the working folder (and the files the
        code made) back to its owner. Nothing of the sandbox runs any more, and no link is followed. A
        launch still under way (its caller was cancelled) is waited for, and no launch starts afterwards."""
        with self._lock:
            self.closed = True
            self._close()

    def _close(self) -> None:
        self.kill()
        for cg in [c for c in [self.freezer] if c is not None] + self.cgroups:
            _remove_cgroup(cg["path"])
        self.cgroups, self.freezer = [], None
        if self.disk_mounted:  # the files go with the conversation's folder
            unmount(str(self.work_dir))
            self.disk_mounted = False
        if self.state_mounted:
            unmount(str(self.state_dir))
            self.state_mounted = False
        if self._work_owner is None or self.uid is None:
            return
        owner, group, mode = self._work_owner
        for top, dirs, files in os.walk(self.work_dir, followlinks=False):
            for name in dirs + files:
                p = os.path.join(top, name)
                try:
                    if os.lstat(p).st_uid == self.uid:
                        os.lchown(p, owner, group)
                except OSError:
                    pass
        try:
            wfd = _open_dir(self.work_dir)
            try:
                os.fchown(wfd, owner, group)
                os.fchmod(wfd, mode)
            finally:
                os.close(wfd)
        except OSError:
            pass
        self._work_owner = None

    def _config(self, argv: list[str], env: dict[str, str], namespaces: bool, uid: int | None) -> dict:
        lim = self.limits
        rl: dict = {"CORE": 0}
        if lim.memory_bytes:
            rl["AS"] = lim.memory_bytes
        if lim.cpu_seconds:
            rl["CPU"] = [lim.cpu_seconds, lim.cpu_seconds + 5]  # SIGXCPU, then SIGKILL
        if lim.file_size_bytes:
            rl["FSIZE"] = lim.file_size_bytes
        if lim.open_files:
            rl["NOFILE"] = lim.open_files
        if lim.processes:
            if uid is not None:
                rl["NPROC"] = lim.processes
            elif os.geteuid() != 0:
                # shared with every other process of this user: allow this many more than exist now
                rl["NPROC"] = tasks_of_uid(os.getuid()) + lim.processes
        base = str(self.base_dir)
        ro = [
            p
            for p in _dedupe(SYSTEM_PATHS + python_paths())
            if not p.startswith(base) and not p.startswith(str(self.work_dir))
        ]
        return {
            "argv": argv,
            "env": env,
            "namespaces": namespaces,
            "uid": uid,
            "gid": uid,
            "rlimits": rl,
            "ro_paths": ro + [str(self.shared_dir)],
            "root_dir": str(self.host_dir / "root"),
            "work_dir": str(self.work_dir),
            "work_mount": WORK_MOUNT,
            "state_dir": str(self.state_dir),
            "tmpfs_size": lim.tmp_size,
            "cgroups": self.cgroups,
            "freezer": self.freezer,
        }

    def _bwrap_prefix(self, cfg: dict) -> list[str]:
        cmd = [
            shutil.which("bwrap") or "bwrap",
            "--die-with-parent",
            "--unshare-net",
            "--unshare-pid",
            "--unshare-ipc",
            "--new-session",
        ]
        # /tmp first: a Python or a venv under /tmp is bound inside it, not hidden by it
        cmd += [
            "--dev",
            "/dev",
            "--proc",
            "/proc",
            "--perms",
            "1777",
            "--tmpfs",
            "/tmp",
            "--perms",
            "1777",
            "--tmpfs",
            "/dev/shm",
        ]
        made: set[str] = {"/tmp", "/dev", "/proc", "/dev/shm"} | set(cfg["ro_paths"])

        def parents(path: str) -> list[str]:
            # parents (e.g. /root for a Python under /root/.pyenv) must be traversable by the sandbox's user
            out = []
            for parent in reversed(Path(path).parents):
                if str(parent) != "/" and str(parent) not in made:
                    out += ["--perms", "0755", "--dir", str(parent)]
                    made.add(str(parent))
            return out

        for p in cfg["ro_paths"]:
            cmd += parents(p)
            if os.path.islink(p):
                cmd += ["--symlink", os.readlink(p), p]
            elif os.path.exists(p):
                cmd += ["--ro-bind", p, p]
        cmd += parents(WORK_MOUNT) + ["--bind", cfg["work_dir"], WORK_MOUNT]
        cmd += parents(cfg["state_dir"]) + ["--bind", cfg["state_dir"], cfg["state_dir"], "--chdir", WORK_MOUNT]
        return cmd + ["--"]

    def launch(self, argv: list[str], env: dict[str, str], timeout: float = 20.0) -> dict:
        """Start ``argv`` in the sandbox; returns what isolation took effect (also in ``self.status``).

        As root, the command runs as an unprivileged user of its own, which needs either a private root
        (namespaces) or a Python that any user may read; failing both it runs as root, and then only a
        pids cgroup can bound its processes: without one it refuses to start (``isolation="none"``
        accepts that)."""
        with self._lock:
            if self.closed:
                raise SandboxError("the sandbox was closed")
            return self._launch_locked(argv, env, timeout)

    def _launch_locked(self, argv: list[str], env: dict[str, str], timeout: float) -> dict:
        if self.isolation == "bwrap" and not shutil.which("bwrap"):
            raise SandboxError(
                "isolation 'bwrap' needs bubblewrap, which is not installed (Debian: apt-get install bubblewrap)"
            )
        status = self._launch(argv, env, timeout, use_bwrap=self.isolation == "bwrap")
        if self.isolation == "auto" and os.geteuid() != 0 and status.get("network") == "host" and bwrap_works():
            self.notes.append("no user namespaces for the launcher: bubblewrap isolates the kernel")
            status = self._launch(argv, env, timeout, use_bwrap=True)
        if (
            self.uid is not None
            and not str(status.get("filesystem", "")).startswith("private root")
            and not all(
                _world_accessible(p) for p in (sys.executable, str(self.work_dir.parent), str(self.base_dir.parent))
            )
        ):
            self.kill()
            self.notes.append(
                f"{sys.executable} or the sandbox's folders are not reachable by other users and no "
                "private root is possible: the kernel runs as root"
            )
            log.warning("python sandbox: %s", self.notes[-1])
            self.drop_uid, self.uid = False, None
            status = self._launch(argv, env, timeout, use_bwrap=self.isolation == "bwrap")
        if (
            os.geteuid() == 0
            and self.uid is None
            and self.isolation != "none"
            and not any("pids" in cg["controllers"] for cg in self.cgroups)
        ):
            self.kill()
            raise SandboxError(
                "cannot bound the number of processes of the Python sandbox here (running as root, "
                "no unprivileged user possible, no pids cgroup); choose isolation='none' to run it anyway"
            )
        return status

    def _launch(self, argv: list[str], env: dict[str, str], timeout: float, use_bwrap: bool) -> dict:
        self.kill()
        namespaces = self.isolation == "auto"
        uid = None
        if self.drop_uid and self.isolation != "none":
            uid = self.uid = self.uid or self._pick_uid()
        elif self.isolation == "none":
            self.uid = None
        self._prepare_dirs(uid)
        if os.geteuid() == 0 and not self._cgroups_made:  # once a conversation: restarts stay in them
            self.cgroups, self.freezer = _cgroups_for(f"gptoss-python-{host_tag()}-{id(self):x}", self.limits)
            self._cgroups_made = True
        cfg = self._config(argv, env, namespaces and not use_bwrap, uid)
        cfg["inside_bwrap"] = use_bwrap
        status_r, status_w = os.pipe()
        life_r, life_w = os.pipe()
        cmd = [sys.executable, "-I", "-c", LAUNCHER.read_text(), str(status_w), str(life_r)]
        if use_bwrap:
            cmd = self._bwrap_prefix(cfg) + cmd
        try:
            self.process = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                pass_fds=(status_w, life_r),
                start_new_session=True,
                close_fds=True,
            )
        except BaseException:
            os.close(life_w)
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
            os.close(life_r)
        self._lifeline = life_w  # only this process holds it: the launcher reads end-of-file when we are gone
        self._output = _OutputTail(self.process.stdout)
        self._output.start()
        try:
            self.process.stdin.write(json.dumps(cfg).encode())
            self.process.stdin.close()
        except OSError:
            pass
        try:
            data = _read_pipe(status_r, time.monotonic() + timeout, _STATUS_LIMIT)
        finally:
            os.close(status_r)
        try:
            status = json.loads(data) if data else None
        except ValueError:
            status = None
        if not isinstance(status, dict):
            code = self.process.poll()
            self.kill()
            why = "no answer in time" if data is None else f"launcher exit {code}"
            raise SandboxError(f"the Python sandbox did not start ({why}): {self.log_tail()}")
        self.status = status
        if use_bwrap:
            self.status.update(network="loopback only", filesystem="private root (bubblewrap)", pid_namespace=True)
        if "error" in self.status:
            err = str(self.status["error"])[:500]
            self.kill()
            raise SandboxError(f"the Python sandbox could not be set up: {err}")
        self._kernel_pid = None
        return self.status

    def log_tail(self, n: int = 2000) -> str:
        """The end of what the launcher and the command wrote to stdout/stderr."""
        return self._output.text(n) if self._output is not None else ""

    def pin_sockets(self, prefix: str, ports: list[int], timeout: float) -> str:
        """Wait for the command's Unix sockets ``s/PREFIX-PORT`` and pin each: opened with ``O_PATH |
        O_NOFOLLOW``, checked to be a socket of the sandbox's user, reached only through a link in the
        host's own folder to that descriptor. Returns the host-side prefix to connect to; whatever the
        sandbox later puts at those paths is never followed."""
        self._unpin()
        owner = self.uid if self.uid is not None else os.geteuid()
        deadline = time.monotonic() + timeout
        sfd = _open_dir(self.state_dir)
        try:
            for port in ports:
                name = f"{prefix}-{port}"
                while True:
                    try:
                        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=sfd)
                        break
                    except FileNotFoundError:
                        if not self.alive:
                            raise SandboxError(f"the kernel exited while starting: {self.log_tail()}") from None
                        if time.monotonic() > deadline:
                            raise SandboxError(
                                f"the kernel did not open its sockets within {timeout:.0f} s: {self.log_tail()}"
                            ) from None
                        time.sleep(0.02)
                st = os.fstat(fd)
                if not stat.S_ISSOCK(st.st_mode) or st.st_uid != owner:
                    os.close(fd)
                    raise SandboxError(f"the kernel's socket {name} is not a socket of the sandbox's user")
                self._pinned.append(fd)
                link = self.host_dir / name
                link.unlink(missing_ok=True)
                os.symlink(f"/proc/self/fd/{fd}", link)
        finally:
            os.close(sfd)
        return str(self.host_dir / prefix)

    def _unpin(self) -> None:
        for fd in self._pinned:
            os.close(fd)
        self._pinned = []

    # ------------------------------------------------------------------ the running tree
    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kernel_pid(self) -> int | None:
        """Host pid of the sandboxed command: the oldest process in the tree running it."""
        if self._kernel_pid is not None:
            st = _stat_of(self._kernel_pid)
            if st is not None and st[1] == self._kernel_start and st[3] != "Z":
                return self._kernel_pid
            self._kernel_pid = None
        if not self.alive:
            return None
        table = process_table()
        found = [p for p in descendants(self.process.pid, table) if self.marker in _argv(p)]  # a whole argument
        if not found:
            return None
        self._kernel_pid = min(found, key=lambda p: table[p][1])
        self._kernel_start = table[self._kernel_pid][1]
        return self._kernel_pid

    def strays(self) -> list[int]:
        """Processes in the sandbox other than the command itself and the sandbox's own helpers (the
        launcher and the reaper, the command's ancestors)."""
        if not self.alive:
            return []
        kernel = self.kernel_pid()
        if kernel is None:
            return []
        table = process_table()
        keep = {kernel, self.process.pid}
        pid = kernel
        while pid in table and pid != self.process.pid:
            pid = table[pid][0]
            keep.add(pid)
        return [p for p in descendants(self.process.pid, table) if p not in keep and table[p][3] != "Z"]

    def kill_strays(self, rounds: int = 100) -> int:
        """SIGKILL every process the code started (repeating while a fork bomb still forks). Returns how many."""
        killed: set[int] = set()
        for _ in range(rounds):
            pids = self.strays()
            if not pids:
                break
            for sig in (signal.SIGSTOP, signal.SIGKILL):
                for pid in pids:
                    try:
                        os.kill(pid, sig)
                        killed.add(pid)
                    except OSError:
                        pass
            time.sleep(0.02)
        return len(killed)

    def cpu_seconds(self) -> float | None:
        """CPU time the kernel has used."""
        pid = self.kernel_pid()
        st = _stat_of(pid) if pid else None
        return None if st is None else st[2] / _CLK_TCK

    def kill(self) -> None:
        """Kill the whole tree and wait for it (the conversation's cgroups are kept, empty and thawed)."""
        with self._lock:
            self._kill()

    def _kill(self) -> None:
        proc = self.process
        if proc is not None:
            tree = descendants(proc.pid) if proc.poll() is None else []
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            for pid in [proc.pid, *tree]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            for cg in [c for c in [self.freezer] if c is not None] + self.cgroups:
                _empty_cgroup(cg["path"])  # frozen ones too (thawed to die)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self.process = None
        self._kernel_pid = None
        if self.uid is not None and self.drop_uid:
            self._kill_uid(self.uid)  # anything of the sandbox's own user that left the tree (setsid, double fork)
        for cg in [c for c in [self.freezer] if c is not None] + self.cgroups:
            _empty_cgroup(cg["path"])
        if self.freezer is not None:
            _set_frozen(self.freezer["path"], False, wait=0)
        self._unpin()
        if self._lifeline is not None:
            os.close(self._lifeline)
            self._lifeline = None

    @staticmethod
    def _kill_uid(uid: int, rounds: int = 50) -> None:
        for _ in range(rounds):
            found = False
            for name in os.listdir("/proc"):
                if not name.isdigit():
                    continue
                try:
                    if os.stat(f"/proc/{name}").st_uid != uid:
                        continue
                    os.kill(int(name), signal.SIGKILL)
                    found = True
                except OSError:
                    pass
            if not found:
                return
            time.sleep(0.01)

    def _frozen_cgroup(self) -> str | None:
        """The freezer cgroup the sandbox's processes are in (None: it could not be joined)."""
        if self.freezer is None or self.status.get("freezer") != self.freezer["path"]:
            return None
        return self.freezer["path"]

    def pause(self) -> None:
        """Freeze the whole sandbox between calls (its cgroup; without one, SIGSTOP to every process of the
        tree, repeated until none runs), so that threads and processes the code left burn no CPU, start
        nothing and cannot wake each other. The launcher stays awake: it must notice its host's death."""
        if not self.alive:
            return
        path = self._frozen_cgroup()
        if path is not None and _set_frozen(path, True):
            return
        reaper = self.status.get("reaper_pid")
        if not isinstance(reaper, int):
            return
        for _ in range(100):  # bounded: a process may still be forking while we stop the others
            table = process_table()
            running = [p for p in descendants(reaper, table) if table[p][3] not in "TtZX"]
            if not running:
                return
            for pid in running:
                try:
                    os.kill(pid, signal.SIGSTOP)
                except OSError:
                    pass
            time.sleep(0.002)

    def resume(self) -> None:
        if not self.alive:
            return
        path = self._frozen_cgroup()
        if path is not None:
            _set_frozen(path, False)
            return
        reaper = self.status.get("reaper_pid")
        if isinstance(reaper, int):
            for pid in descendants(reaper):
                try:
                    os.kill(pid, signal.SIGCONT)
                except OSError:
                    pass

    def disk_full(self) -> bool:
        """Is the conversation's sized /mnt/data (nearly) full?"""
        if not self.disk_mounted:
            return False
        try:
            st = os.statvfs(self.work_dir)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < 64 * 1024

    def oom_kills(self) -> int:
        """Processes of the sandbox the conversation's memory limit has killed (0 without a memory cgroup)."""
        return _oom_kills(self.cgroups)

    # ------------------------------------------------------------------ reporting
    def describe(self) -> dict[str, str]:
        """What is isolated, in words (for logs, README and tests)."""
        s = self.status
        lim = self.limits
        uid = s.get("uid")
        if self.uid is not None and uid == self.uid:
            user = f"unprivileged uid {uid} of its own"
        elif uid == 0:
            user = "root (no unprivileged user available)"
        else:
            user = f"uid {uid} (the calling user)" + (" in a user namespace" if s.get("user_namespace") else "")
        procs = []
        if self.uid is not None and uid == self.uid and lim.processes:
            procs.append(f"RLIMIT_NPROC {lim.processes}")
        elif lim.processes and os.geteuid() != 0:
            procs.append(f"RLIMIT_NPROC (+{lim.processes} over the user's count)")
        joined = set(s.get("cgroups") or [])
        controllers = {c for cg in self.cgroups if cg["path"] in joined for c in cg["controllers"]}
        if "pids" in controllers:
            procs.append(f"pids cgroup max {lim.processes}")
        return {
            "user": user,
            "network": s.get("network", "host"),
            "filesystem": s.get("filesystem", "host"),
            "work_path": s.get("work_path", str(self.work_dir)),
            "pid_namespace": "yes" if s.get("pid_namespace") else "no",
            "processes": ", ".join(procs) or "no limit",
            "memory": ", ".join(
                ([f"RLIMIT_AS {lim.memory_bytes} a process"] if lim.memory_bytes else [])
                + ([f"memory cgroup max {lim.total_memory_bytes} in all"] if "memory" in controllers else [])
            )
            or "no limit",
            "cpu": f"RLIMIT_CPU {lim.cpu_seconds} s a process, and the call's timeout"
            if lim.cpu_seconds
            else "the call's timeout",
            "disk": ", ".join(
                ([f"RLIMIT_FSIZE {lim.file_size_bytes} a file"] if lim.file_size_bytes else [])
                + ([f"/mnt/data a tmpfs of {lim.disk_bytes} in all"] if self.disk_mounted else [])
            )
            or "no limit",
        }
