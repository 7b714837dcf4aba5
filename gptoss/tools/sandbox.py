"""The Python tool's sandbox, host side: limits, isolation, the process tree, and cleaning it up.

What is isolated depends on what the operating system allows (see README, "Tools"):

- Always: resource limits (address space, CPU time, file size, open files, no core dumps), a private
  working folder, a minimal environment (no API keys or tokens of the parent), every process the code
  starts killed when the call ends, the whole tree killed with the conversation.
- Linux as root (or with unprivileged user namespaces): own network namespace (loopback only), own mount
  namespace with a private read-only root (system folders and Python, read-only; the working folder at
  ``/mnt/data``; private ``/tmp``), own PID namespace; as root also an unprivileged user id of its own, so
  the process limit (RLIMIT_NPROC) holds, and a ``pids`` cgroup where one can be created.
- Otherwise, bubblewrap (``bwrap``) when it is installed and works, or rlimits alone.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

LAUNCHER = Path(__file__).with_name("_sandbox_launch.py")
WORK_MOUNT = "/mnt/data"
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


class SandboxError(RuntimeError):
    pass


@dataclass
class SandboxLimits:
    """Limits on what the sandboxed code may use. ``None`` leaves a limit unset."""

    memory_bytes: int | None = 2 * 1024**3  # address space of each process (RLIMIT_AS)
    processes: int | None = 128  # processes and threads of the sandbox
    cpu_seconds: int | None = 3600  # CPU time of each process (RLIMIT_CPU); the kernel restarts past it
    file_size_bytes: int | None = 1024**3
    open_files: int | None = 1024
    tmp_size: str = "256m"  # private /tmp and /dev/shm (tmpfs, counts as memory)


def _stat_of(pid: int) -> tuple[int, int, int, str] | None:
    """(ppid, start time in ticks, cpu ticks used, state letter) of a process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), int(fields[19]), int(fields[11]) + int(fields[12]), fields[0]


def process_table() -> dict[int, tuple[int, int, int, str]]:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat_of(int(name))
            if st is not None:
                out[int(name)] = st
    return out


def descendants(root: int, table: dict[int, tuple[int, int, int, str]] | None = None) -> list[int]:
    table = process_table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, *_rest) in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def tasks_of_uid(uid: int) -> int:
    """Processes and threads whose real uid is ``uid`` (what RLIMIT_NPROC counts)."""
    total = 0
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/status") as f:
                text = f.read()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        try:
            if int(fields["Uid"].split()[0]) == uid:
                total += int(fields.get("Threads", "1"))
        except (KeyError, ValueError, IndexError):
            continue
    return total


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


def _cgroup_for(name: str, pids_max: int) -> dict | None:
    """A pids cgroup (v1 or v2) we may create, or None."""
    base = Path("/sys/fs/cgroup")
    candidates = []
    if (base / "pids").is_dir():
        candidates.append(base / "pids")
    if (base / "cgroup.controllers").is_file():
        try:
            if "pids" in (base / "cgroup.subtree_control").read_text().split():
                candidates.append(base)
        except OSError:
            pass
    for parent in candidates:
        path = parent / name
        try:
            path.mkdir()
        except OSError:
            continue
        try:
            (path / "pids.max").write_text(str(pids_max))
            return {"path": str(path), "pids_max": pids_max}
        except OSError:
            try:
                path.rmdir()
            except OSError:
                pass
    return None


def bwrap_works() -> bool:
    exe = shutil.which("bwrap")
    if not exe:
        return False
    try:
        r = subprocess.run([exe, "--unshare-net", "--unshare-pid", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                            "true"], capture_output=True, timeout=10, check=False)
        return r.returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


class Sandbox:
    """One sandboxed command (the kernel) with its working folder and its private state folder.

    ``isolation``: ``"auto"`` (everything the system allows, see the module docstring), ``"bwrap"``
    (bubblewrap for the namespaces), or ``"none"`` (limits and process cleanup only).
    """

    def __init__(self, work_dir: Path, state_dir: Path, limits: SandboxLimits, isolation: str = "auto",
                 marker: str = "ipykernel_launcher"):
        if isolation not in ("auto", "bwrap", "none"):
            raise SandboxError(f"isolation: expected auto, bwrap or none, found {isolation!r}")
        self.work_dir = Path(work_dir)
        self.state_dir = Path(state_dir)
        self.limits = limits
        self.isolation = isolation
        self.marker = marker
        self.process: subprocess.Popen | None = None
        self.status: dict = {}
        self.cgroup: dict | None = None
        self.uid: int | None = None
        self.drop_uid = os.geteuid() == 0
        self._kernel_pid: int | None = None
        self._work_owner: tuple[int, int, int] | None = None
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
        """The folders exist, and belong to the sandbox's user when it has one. The working folder is
        handed over (not its files: those the host put there stay read-only to the code) and handed
        back by :meth:`close`."""
        for d in (self.work_dir, self.state_dir, self.state_dir / "home", self.state_dir / "root"):
            d.mkdir(parents=True, exist_ok=True)
        if uid is not None:
            if self._work_owner is None:
                st = self.work_dir.stat()
                self._work_owner = (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode))
            for d in (self.work_dir, self.state_dir, self.state_dir / "home"):
                os.chown(d, uid, uid)
                os.chmod(d, 0o700)

    def close(self) -> None:
        """Kill the tree and give the working folder (and the files the code made) back to its owner."""
        self.kill()
        if self._work_owner is None or self.uid is None:
            return
        owner, group, mode = self._work_owner
        try:
            for p in [self.work_dir, *self.work_dir.rglob("*")]:
                try:
                    if os.lstat(p).st_uid == self.uid:
                        os.lchown(p, owner, group)
                except OSError:
                    pass
            os.chmod(self.work_dir, mode)
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
        ro = SYSTEM_PATHS + python_paths()
        ro = [p for p in _dedupe(ro) if not p.startswith(str(self.state_dir)) and not p.startswith(str(self.work_dir))]
        return {
            "argv": argv,
            "env": env,
            "namespaces": namespaces,
            "uid": uid,
            "gid": uid,
            "rlimits": rl,
            "ro_paths": ro,
            "root_dir": str(self.state_dir / "root"),
            "work_dir": str(self.work_dir),
            "work_mount": WORK_MOUNT,
            "state_dir": str(self.state_dir),
            "tmpfs_size": lim.tmp_size,
            "status_file": str(self.state_dir / "status.json"),
            "cgroup": self.cgroup,
        }

    def _bwrap_prefix(self, cfg: dict) -> list[str]:
        cmd = [shutil.which("bwrap") or "bwrap", "--die-with-parent", "--unshare-net", "--unshare-pid", "--unshare-ipc",
               "--new-session"]
        made: set[str] = set(cfg["ro_paths"])

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
        cmd += ["--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--tmpfs", "/tmp", "--perms", "1777", "--tmpfs",
                "/dev/shm"]
        made.update(["/tmp", "/dev", "/proc"])
        cmd += parents(WORK_MOUNT) + ["--bind", cfg["work_dir"], WORK_MOUNT]
        cmd += parents(cfg["state_dir"]) + ["--bind", cfg["state_dir"], cfg["state_dir"], "--chdir", WORK_MOUNT]
        return cmd + ["--"]

    def launch(self, argv: list[str], env: dict[str, str], timeout: float = 20.0) -> dict:
        """Start ``argv`` in the sandbox; returns what isolation took effect (also in ``self.status``).

        As root, the command runs as an unprivileged user of its own, which needs either a private root
        (namespaces) or a Python that any user may read; failing both it runs as root, and then only a
        pids cgroup can bound its processes: without one it refuses to start (``isolation="none"``
        accepts that)."""
        if self.isolation == "bwrap" and not shutil.which("bwrap"):
            raise SandboxError("isolation 'bwrap' needs bubblewrap, which is not installed (Debian: apt-get install "
                               "bubblewrap)")
        status = self._launch(argv, env, timeout, use_bwrap=self.isolation == "bwrap")
        if self.isolation == "auto" and os.geteuid() != 0 and status.get("network") == "host" and bwrap_works():
            self.notes.append("no user namespaces for the launcher: bubblewrap isolates the kernel")
            status = self._launch(argv, env, timeout, use_bwrap=True)
        if self.uid is not None and not str(status.get("filesystem", "")).startswith("private root") \
                and not all(_world_accessible(p) for p in (sys.executable, str(self.work_dir.parent),
                                                           str(self.state_dir.parent))):
            self.kill()
            self.notes.append(f"{sys.executable} or the sandbox's folders are not reachable by other users and no "
                              "private root is possible: the kernel runs as root")
            log.warning("python sandbox: %s", self.notes[-1])
            self.drop_uid, self.uid = False, None
            status = self._launch(argv, env, timeout, use_bwrap=self.isolation == "bwrap")
        if os.geteuid() == 0 and self.uid is None and self.isolation != "none" and not status.get("cgroup"):
            self.kill()
            raise SandboxError("cannot bound the number of processes of the Python sandbox here (running as root, "
                               "no unprivileged user possible, no pids cgroup); choose isolation='none' to run it anyway")
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
        if os.geteuid() == 0 and self.limits.processes:
            self.cgroup = _cgroup_for(f"gptoss-python-{os.getpid()}-{id(self):x}", self.limits.processes + 8)
        cfg = self._config(argv, env, namespaces and not use_bwrap, uid)
        cfg["inside_bwrap"] = use_bwrap
        cfg_path = self.state_dir / "sandbox.json"
        cfg_path.write_text(json.dumps(cfg))
        status_file = Path(cfg["status_file"])
        status_file.unlink(missing_ok=True)
        launcher = self.state_dir / LAUNCHER.name  # a copy inside the sandbox's own folder: visible in every mode
        shutil.copyfile(LAUNCHER, launcher)
        cmd = [sys.executable, "-I", str(launcher), str(cfg_path)]
        if use_bwrap:
            cmd = self._bwrap_prefix(cfg) + cmd
        with open(self.state_dir / "launcher.log", "ab") as log_file:  # the launcher keeps its own copy
            self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
                                            start_new_session=True, close_fds=True)
        deadline = time.monotonic() + timeout
        while not status_file.exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                code = self.process.poll()
                log_text = self.log_tail()
                self.kill()
                raise SandboxError(f"the Python sandbox did not start (launcher exit {code}): {log_text}")
            time.sleep(0.02)
        self.status = json.loads(status_file.read_text())
        if use_bwrap:
            self.status.update(network="loopback only", filesystem="private root (bubblewrap)", pid_namespace=True)
        if "error" in self.status:
            err = self.status["error"]
            self.kill()
            raise SandboxError(f"the Python sandbox could not be set up: {err}")
        self._kernel_pid = None
        return self.status

    def log_tail(self, n: int = 2000) -> str:
        try:
            return (self.state_dir / "launcher.log").read_bytes()[-n:].decode(errors="replace").strip()
        except OSError:
            return ""

    # ------------------------------------------------------------------ the running tree
    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kernel_pid(self) -> int | None:
        """Host pid of the sandboxed command: the oldest process in the tree running it."""
        if self._kernel_pid is not None and _stat_of(self._kernel_pid) is not None:
            return self._kernel_pid
        if not self.alive:
            return None
        table = process_table()
        found = [p for p in descendants(self.process.pid, table) if self.marker in _cmdline(p)]
        if not found:
            return None
        self._kernel_pid = min(found, key=lambda p: table[p][1])
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
        """Kill the whole tree and wait for it."""
        proc = self.process
        if proc is not None:
            tree = descendants(proc.pid) if proc.poll() is None else []
            for sig in (signal.SIGKILL,):
                try:
                    os.killpg(proc.pid, sig)
                except OSError:
                    pass
                for pid in [proc.pid, *tree]:
                    try:
                        os.kill(pid, sig)
                    except OSError:
                        pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            self.process = None
        self._kernel_pid = None
        if self.cgroup:
            path = Path(self.cgroup["path"])
            for _ in range(100):
                try:
                    procs = (path / "cgroup.procs").read_text().split()
                except OSError:
                    break
                for pid in procs:
                    try:
                        os.kill(int(pid), signal.SIGKILL)
                    except OSError:
                        pass
                try:
                    path.rmdir()
                    break
                except OSError:
                    time.sleep(0.02)
            self.cgroup = None

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
        if s.get("cgroup"):
            procs.append(f"pids cgroup max {lim.processes}")
        return {
            "user": user,
            "network": s.get("network", "host"),
            "filesystem": s.get("filesystem", "host"),
            "work_path": s.get("work_path", str(self.work_dir)),
            "pid_namespace": "yes" if s.get("pid_namespace") else "no",
            "processes": ", ".join(procs) or "no limit",
            "memory": f"RLIMIT_AS {lim.memory_bytes}" if lim.memory_bytes else "no limit",
            "cpu": f"RLIMIT_CPU {lim.cpu_seconds} s a process, and the call's timeout" if lim.cpu_seconds else "the call's timeout",
        }
