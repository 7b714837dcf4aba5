"""The sandbox's cgroups (v1 or v2): per conversation, inside one parent for all sandboxes of the
process; limits, the freezer, the OOM killer's count, and killing and removing what is in them."""

from __future__ import annotations

import atexit
import logging
import os
import signal
import time
from pathlib import Path

from gptoss.tools.python.limits import SandboxLimits
from gptoss.tools.python.processes import host_tag

log = logging.getLogger(__name__)


def _cgroup_files(limits: SandboxLimits, controllers: set[str]) -> dict[str, dict[str, str]]:
    """Controller -> {file: value} for the limits that controller enforces; v2 names."""
    out: dict[str, dict[str, str]] = {}
    if limits.processes and "pids" in controllers:
        out["pids"] = {"pids.max": str(limits.processes + 8)}  # + the launcher, reaper and kernel threads
    if limits.total_memory_bytes and "memory" in controllers:
        out["memory"] = {"memory.max": str(limits.total_memory_bytes), "memory.swap.max": "0"}
    return out


_V1_NAMES = {"memory.max": "memory.limit_in_bytes", "memory.swap.max": None}
CGROUP_ROOT = "/sys/fs/cgroup"


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _sandboxes_cgroups(limits: SandboxLimits, version: int, controllers: list[str]) -> dict[str, str]:
    """The parent cgroup of all this process's sandboxes (one per hierarchy: controller -> path), made if
    missing, with the budget of ``limits.sandboxes_memory_bytes`` set (``max`` without one: the latest
    configuration sets it, one budget for the process)."""
    name = f"gptoss-sandboxes-{host_tag()}"
    budget = limits.sandboxes_memory_bytes
    out = {}
    if name not in _PARENTS_MADE:
        _PARENTS_MADE.add(name)
        atexit.register(_remove_empty_parents, name)
    if version == 2:
        path = os.path.join(CGROUP_ROOT, name)
        os.makedirs(path, exist_ok=True)
        wanted = [c for c in ("memory", "pids") if c in controllers]
        if wanted:
            _write(os.path.join(path, "cgroup.subtree_control"), " ".join("+" + c for c in wanted))
        if "memory" in controllers:
            _set_budget(path, 2, budget)
        return {c: path for c in ["freezer", *controllers]}
    for controller in controllers:
        path = os.path.join(CGROUP_ROOT, controller, name)
        try:
            os.makedirs(path, exist_ok=True)
            if controller == "memory":
                _set_budget(path, 1, budget)
            out[controller] = path
        except OSError as exc:
            log.warning("python sandbox: cannot make the %s cgroup of all sandboxes: %s", controller, exc)
    return out


_PARENTS_MADE: set[str] = set()


def _set_budget(path: str, version: int, budget: int | None) -> None:
    if version == 2:
        _write(os.path.join(path, "memory.max"), str(budget) if budget else "max")
        if os.path.exists(os.path.join(path, "memory.swap.max")):
            _write(os.path.join(path, "memory.swap.max"), "0" if budget else "max")
    else:
        _write(os.path.join(path, "memory.limit_in_bytes"), str(budget) if budget else "-1")


def set_sandboxes_memory(budget: int | None) -> bool:
    """Set (None: lift) the memory budget of all this process's sandboxes now; False if there is no
    parent cgroup to set it on."""
    name = f"gptoss-sandboxes-{host_tag()}"
    for path, version in ((os.path.join(CGROUP_ROOT, name), 2), (os.path.join(CGROUP_ROOT, "memory", name), 1)):
        if os.path.isdir(path) and (version == 1 or os.path.exists(os.path.join(path, "memory.max"))):
            try:
                _set_budget(path, version, budget)
                return True
            except OSError:
                return False
    return False


def _remove_empty_parents(name: str) -> None:
    """At exit: the parents of this process's sandboxes, if empty (what is not, the next start sweeps)."""
    for parent in [CGROUP_ROOT] + [os.path.join(CGROUP_ROOT, c) for c in ("pids", "memory", "freezer")]:
        try:
            os.rmdir(os.path.join(parent, name))
        except OSError:
            pass


def _cgroups_for(name: str, limits: SandboxLimits) -> tuple[list[dict], dict | None]:
    """The conversation's cgroups (v1 or v2), made with their limits set, inside the parent of all this
    process's sandboxes, and the cgroup that freezes its processes between calls (v2: a leaf below the
    conversation's, holding the reaper and everything under it but not the launcher, which must stay
    awake to notice its host's death; v1: one of the freezer hierarchy). What cannot be made is left out
    (``describe`` says what holds)."""
    base = Path(CGROUP_ROOT)
    made: list[dict] = []
    freezer = None
    if (base / "cgroup.controllers").is_file():  # v2
        try:
            controllers = set((base / "cgroup.subtree_control").read_text().split())
        except OSError:
            controllers = set()
        wanted = _cgroup_files(limits, controllers)
        try:
            parent = _sandboxes_cgroups(limits, 2, sorted(wanted))["freezer"]
        except OSError:
            return [], None
        path = Path(parent) / name
        try:
            path.mkdir(exist_ok=True)
            for files in wanted.values():
                for file, value in files.items():
                    if file == "memory.swap.max" and not (path / file).exists():
                        continue
                    (path / file).write_text(value)
            made.append({"path": str(path), "controllers": sorted(wanted), "version": 2, "root": CGROUP_ROOT})
        except OSError:
            _remove_cgroup(str(path))
            return [], None
        try:
            (path / "k").mkdir(exist_ok=True)
            if (path / "k" / "cgroup.freeze").exists():
                freezer = {"path": str(path / "k"), "version": 2, "root": CGROUP_ROOT}
        except OSError:
            pass
        return made, freezer
    wanted = _cgroup_files(limits, {"pids", "memory"})
    present = [c for c in ("pids", "memory", "freezer") if (base / c).is_dir()]
    try:
        parents = _sandboxes_cgroups(limits, 1, present)
    except OSError:
        parents = {}
    for controller in present:  # v1: one hierarchy each
        if controller not in parents or (controller != "freezer" and controller not in wanted):
            continue
        path = Path(parents[controller]) / name
        try:
            path.mkdir(exist_ok=True)
            for file, value in wanted.get(controller, {}).items():
                file = _V1_NAMES.get(file, file)
                if file:
                    (path / file).write_text(value)
            if controller == "memory" and (path / "memory.memsw.limit_in_bytes").exists():
                try:  # no swap either (the memory limit must be set first)
                    (path / "memory.memsw.limit_in_bytes").write_text(wanted["memory"]["memory.max"])
                except OSError:
                    pass
            cg = {"path": str(path), "controllers": [controller], "version": 1, "root": str(base / controller)}
            if controller == "freezer":
                freezer = cg
            else:
                made.append(cg)
        except OSError:
            _remove_cgroup(str(path))
    return made, freezer


def _procs(path: str) -> list[int] | None:
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return None


def _set_frozen(path: str, frozen: bool, wait: float = 2.0) -> bool:
    """Freeze (or thaw) every process of a cgroup (v2 ``cgroup.freeze``, v1 ``freezer.state``); True once
    the kernel says it is done."""
    v2 = os.path.exists(os.path.join(path, "cgroup.freeze"))
    try:
        if v2:
            _write(os.path.join(path, "cgroup.freeze"), "1" if frozen else "0")
        elif os.path.exists(os.path.join(path, "freezer.state")):
            _write(os.path.join(path, "freezer.state"), "FROZEN" if frozen else "THAWED")
        else:
            return False
    except OSError:
        return False
    deadline = time.monotonic() + wait
    while True:
        try:
            if v2:
                with open(os.path.join(path, "cgroup.events")) as f:
                    done = f"frozen {int(frozen)}" in f.read().splitlines()
            else:
                with open(os.path.join(path, "freezer.state")) as f:
                    done = f.read().strip() == ("FROZEN" if frozen else "THAWED")
        except OSError:
            return False
        if done or time.monotonic() > deadline:
            return done
        time.sleep(0.002)


def _empty_cgroup(path: str, tries: int = 100) -> bool:
    """Kill everything in a cgroup and below it (frozen processes too: they are thawed to die); True once
    it is empty."""
    for _ in range(tries):
        busy = False
        for top, _dirs, _files in os.walk(path):
            pids = _procs(top)
            if not pids:
                continue
            busy = True
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            _set_frozen(top, False, wait=0)  # a frozen process dies of SIGKILL once thawed (v1)
        if not busy:
            return True
        time.sleep(0.02)
    return False


def _remove_cgroup(path: str, tries: int = 100) -> bool:
    """Kill what is still in a cgroup (and its children) and remove them, deepest first."""
    if not os.path.isdir(path):
        return True
    _empty_cgroup(path, tries)
    for _ in range(tries):
        for top, _dirs, _files in sorted(os.walk(path), key=lambda w: -len(w[0])):
            try:
                os.rmdir(top)
            except OSError:
                pass
        if not os.path.exists(path):
            return True
        _empty_cgroup(path, 1)
        time.sleep(0.02)
    return False


def _oom_kills(cgroups: list[dict]) -> int:
    """Processes the memory cgroup's OOM killer has ended so far."""
    for cg in cgroups:
        if "memory" not in cg["controllers"]:
            continue
        file = "memory.events" if cg["version"] == 2 else "memory.oom_control"
        try:
            with open(os.path.join(cg["path"], file)) as f:
                for line in f:
                    key, _, value = line.partition(" ")
                    if key == "oom_kill":
                        return int(value)
        except (OSError, ValueError):
            pass
    return 0
