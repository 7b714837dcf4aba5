"""The sandboxed Jupyter kernel of one conversation and the client that talks to it: starting it in the
sandbox, running a cell with its timeout (interrupt, then restart), bounded output, restarts after a crash."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

from gptoss.tools.base import ToolError
from gptoss.tools.python.output import (
    ANSI_RE,
    NO_OUTPUT,
    Execution,
    OutputBuffer,
    _size,
)
from gptoss.tools.python.processes import host_tag
from gptoss.tools.python.sandbox import WORK_MOUNT, Sandbox, SandboxError, sweep_stale

if TYPE_CHECKING:
    from gptoss.tools.python.tool import PythonConfig

MAX_MESSAGE_BYTES = 32 * 2**20  # the largest message from the kernel this process accepts


def _signal_name(code: int | None) -> str:
    if code is None:
        return "unknown status"
    sig = code - 128 if code > 128 else (-code if code < 0 else 0)
    if sig:
        try:
            return f"signal {sig} ({signal.Signals(sig).name})"
        except ValueError:
            return f"signal {sig}"
    return f"exit status {code}"


_CHANNELS = ("shell", "iopub", "stdin", "control", "hb")
_swept = False


def mark_swept() -> None:
    """The sweep of what dead hosts left has run in this process (a server runs it when it starts)."""
    global _swept
    _swept = True


def _sweep_once() -> None:
    """Remove what a host that died left behind (its sandboxes died with it), once a process."""
    global _swept
    if not _swept:
        _swept = True
        removed = sweep_stale()
        if removed:
            import logging

            logging.getLogger(__name__).info(
                "python sandbox: removed %d folders/cgroups left by a host that died", len(removed)
            )


_REAP = """
import os as _gptoss_os
try:
    while _gptoss_os.waitpid(-1, _gptoss_os.WNOHANG)[0] > 0:
        pass
except ChildProcessError:
    pass
del _gptoss_os
"""

# Installed before every cell (IPython 9 swaps ``stream.write`` for its own tee during each cell and puts it
# back afterwards, which would undo a patch made once), and once now for IPython versions without the tee.
_SETUP_CAP_WRITES = """
def _gptoss_cap_streams(*_args, _limit={limit}):
    import sys
    for stream in (sys.stdout, sys.stderr):
        write = stream.write
        if getattr(write, "_gptoss_capped", False):
            continue
        def capped(text, *args, _write=write, **kwargs):
            if isinstance(text, str) and len(text) > _limit:
                text = (
                    text[:_limit // 2] + f"\\n[... {{len(text) - _limit}} characters truncated ...]\\n"
                    + text[-(_limit // 2):]
                )
            return _write(text, *args, **kwargs)
        capped._gptoss_capped = True
        try:
            stream.write = capped
        except Exception:
            pass
get_ipython().events.register("pre_run_cell", _gptoss_cap_streams)
_gptoss_cap_streams()
del _gptoss_cap_streams
"""

_SETUP_PATH_REWRITE = """
def _gptoss_mnt_data(lines, _path={path!r}):
    return [line.replace("/mnt/data", _path) for line in lines]
get_ipython().input_transformers_post.append(_gptoss_mnt_data)
del _gptoss_mnt_data
"""


class JupyterRunner:
    """One sandboxed ipykernel and a client talking to it over ZeroMQ IPC sockets (TCP would not cross
    the sandbox's network namespace)."""

    def __init__(self, config: PythonConfig, work_dir: Path, own_work_dir: bool = False):
        self.config = config
        self.work_dir = work_dir
        _sweep_once()
        self.state_dir = Path(tempfile.mkdtemp(prefix=f"gptoss-py-{host_tag()}-"))
        os.chmod(self.state_dir, 0o711)
        self.sandbox = Sandbox(work_dir, self.state_dir, config.limits, config.isolation, own_work_dir=own_work_dir)
        self.client = None
        self._iopub_watch = None
        self._connection: dict = {}
        self.work_path = str(work_dir)
        self.lock = asyncio.Lock()
        self.restarts = 0
        self.told_path = False

    # ------------------------------------------------------------------ lifecycle
    def _env(self) -> dict[str, str]:
        s = str(self.sandbox.state_dir)
        bindir = os.path.dirname(sys.executable)
        return {
            "PATH": f"{bindir}:/usr/local/bin:/usr/bin:/bin",
            "HOME": f"{s}/home",
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "TMPDIR": "/tmp",
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "MPLBACKEND": "Agg",
            "IPYTHONDIR": f"{s}/home/.ipython",
            "JUPYTER_CONFIG_DIR": f"{s}/home/.jupyter",
            "JUPYTER_DATA_DIR": f"{s}/home/.jupyter/data",
            "JUPYTER_RUNTIME_DIR": f"{s}/home/.jupyter/runtime",
            "MALLOC_ARENA_MAX": "2",
            "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        }

    async def start(self) -> None:
        await self.stop_kernel()
        sd = self.sandbox.state_dir
        self.sandbox.shared_dir.mkdir(parents=True, exist_ok=True)
        conn = self.sandbox.shared_dir / "kernel.json"  # the host's folder, read-only to the sandbox
        info = {
            "transport": "ipc",
            "ip": str(sd / "k"),
            "key": uuid.uuid4().hex,
            "signature_scheme": "hmac-sha256",
            "kernel_name": "",
            **{f"{c}_port": i for i, c in enumerate(_CHANNELS, 1)},
        }
        conn.unlink(missing_ok=True)
        fd = os.open(conn, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)  # the sandbox's user reads it
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        argv = [
            sys.executable,
            "-m",
            "ipykernel_launcher",
            "-f",
            str(conn),
            "--HistoryManager.hist_file=:memory:",
            "--IPKernelApp.quiet=True",
        ]
        try:
            status = await asyncio.to_thread(self.sandbox.launch, argv, self._env())
            # the client reaches the kernel's sockets only through descriptors pinned by the host
            ip = await asyncio.to_thread(
                self.sandbox.pin_sockets, "k", list(range(1, len(_CHANNELS) + 1)), self.config.startup_timeout
            )
        except SandboxError as exc:
            await self.stop_kernel()
            raise ToolError(f"python: {exc}") from None
        self.work_path = status.get("work_path", str(self.work_dir))
        if not isinstance(self.work_path, str):
            self.work_path = str(self.work_dir)
        self._connection = {**info, "ip": ip}
        self._connect()
        await self._wait_ready()
        # one huge print keeps its head and tail (a message over MAX_MESSAGE_BYTES would be dropped whole)
        await self._run_quiet(_SETUP_CAP_WRITES.format(limit=max(4 * self.config.max_output_chars, 2**20)))
        if self.work_path != WORK_MOUNT:
            await self._run_quiet(_SETUP_PATH_REWRITE.format(path=self.work_path))

    def _connect(self) -> None:
        """A client on the kernel's (pinned) sockets. What the kernel sends is bounded: a message over
        MAX_MESSAGE_BYTES ends that connection (for good: ZeroMQ does not reconnect after it) instead of
        reaching this process's memory; a monitor tells :meth:`_output_dropped` when that happened."""
        from jupyter_client.asynchronous import AsyncKernelClient

        client = AsyncKernelClient()
        client.load_connection_info(self._connection)
        client.context.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        client.start_channels(hb=False)
        self.client = client
        self._watch_iopub()

    def _watch_iopub(self) -> None:
        self._iopub_watch = self.client.iopub_channel.socket.get_monitor_socket(zmq.EVENT_DISCONNECTED)

    def _output_dropped(self) -> bool:
        """Did the output channel's connection end (an oversized message) while the kernel runs?"""
        try:
            return bool(self._iopub_watch.getsockopt(zmq.EVENTS) & zmq.POLLIN) and self.sandbox.alive
        except (zmq.ZMQError, AttributeError):
            return False

    def _reopen_iopub(self) -> None:
        """A new output channel on the same kernel; the shell channel (and the reply to the running
        request) is kept."""
        client = self.client
        try:
            client.iopub_channel.socket.disable_monitor()
        except zmq.ZMQError:
            pass
        self._iopub_watch.close(linger=0)
        client.iopub_channel.close()
        client._iopub_channel = None  # jupyter_client makes a new one on next use
        client.iopub_channel.start()
        self._watch_iopub()

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout
        while time.monotonic() < deadline:
            if not self.sandbox.alive:
                raise ToolError(f"python: the kernel exited while starting: {self.sandbox.log_tail()}")
            msg_id = self.client.kernel_info()
            try:
                while True:
                    reply = await self.client.get_shell_msg(timeout=0.5)
                    if reply.get("parent_header", {}).get("msg_id") == msg_id:
                        # drain the iopub status messages of the kernel_info request
                        await self._drain_iopub(0.2)
                        return
            except queue.Empty:
                continue
        log = self.sandbox.log_tail()
        await self.stop_kernel()
        raise ToolError(f"python: the kernel did not answer within {self.config.startup_timeout:.0f} s: {log}")

    async def _drain_iopub(self, wait: float) -> None:
        try:
            while True:
                await self.client.get_iopub_msg(timeout=wait)
        except queue.Empty:
            pass

    async def _run_quiet(self, code: str, timeout: float = 10.0) -> bool:
        """Run housekeeping code without output or history; True if it finished."""
        msg_id = self.client.execute(code, silent=True, store_history=False, allow_stdin=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = await self.client.get_iopub_msg(timeout=0.25)
            except queue.Empty:
                if not self.sandbox.alive:
                    return False
                continue
            if (
                msg.get("parent_header", {}).get("msg_id") == msg_id
                and msg["msg_type"] == "status"
                and msg["content"].get("execution_state") == "idle"
            ):
                return True
        return False

    async def stop_kernel(self) -> None:
        if self.client is not None:
            try:
                self.client.stop_channels()
            except Exception:  # noqa: BLE001, S110 - best effort
                pass
            self.client = None
        await asyncio.to_thread(self.sandbox.kill)

    async def close(self) -> None:
        await self.stop_kernel()
        await asyncio.to_thread(self.sandbox.close)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    # ------------------------------------------------------------------ running code
    async def execute(self, code: str, timeout: float) -> Execution:
        async with self.lock:
            notes: list[str] = []
            if self.client is None or not self.sandbox.alive:
                if self.client is not None:
                    notes.append(
                        f"[the Python kernel had stopped ({_signal_name(self._exit_code())}) and was restarted: "
                        "variables and imports were lost; files are kept]"
                    )
                await self.start()
            self.sandbox.resume()
            oom_before = self.sandbox.oom_kills()
            try:
                return await self._execute(code, timeout, notes, oom_before)
            except asyncio.CancelledError:
                # the caller gave up (Ctrl-C, a client that went away): stop the code too
                self._interrupt()
                await asyncio.to_thread(self.sandbox.kill_strays)
                raise
            finally:
                # between calls the sandbox is frozen: nothing the code left running burns CPU or starts anything
                self.sandbox.pause()

    def _memory_limits(self) -> str:
        lim = self.config.limits
        text = f"the conversation's memory limit of {_size(lim.total_memory_bytes)}"
        if lim.sandboxes_memory_bytes:
            text += f" (or the limit of all sandboxes together, {_size(lim.sandboxes_memory_bytes)})"
        return text

    def _exit_code(self) -> int | None:
        proc = self.sandbox.process
        return None if proc is None else proc.poll()

    async def _execute(self, code: str, timeout: float, notes: list[str], oom_before: int = 0) -> Execution:
        buf = OutputBuffer(self.config.max_output_chars)
        msg_id = self.client.execute(code, store_history=True, allow_stdin=False, stop_on_error=False)
        status = "ok"
        deadline = time.monotonic() + timeout
        done = False
        interrupted_at = None
        replied_at = None  # the shell's execute_reply: the end, should the final idle status be lost
        reopened_at = None  # when the output channel was replaced after a dropped message
        while not done:
            now = time.monotonic()
            if replied_at is None:
                replied_at = await self._reply_to(msg_id)
            if self._output_dropped():
                if reopened_at is None:
                    notes.append(
                        f"[some output was dropped: a message of the code's output was over {_size(MAX_MESSAGE_BYTES)}]"
                    )
                self._reopen_iopub()
                reopened_at = now
            if reopened_at is not None and replied_at is not None and now > max(replied_at, reopened_at) + 0.5:
                break  # the final idle status may have gone with the dropped connection
            if interrupted_at is None and now >= deadline:
                status = "timeout"
                interrupted_at = now
                self._interrupt()
            if interrupted_at is not None and now >= interrupted_at + self.config.interrupt_grace:
                break  # the interrupt did not take: restart below
            try:
                msg = await self.client.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                if not self.sandbox.alive:
                    status = "crashed"
                    break
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                buf.add(content.get("text", ""))
            elif kind in ("execute_result", "display_data"):
                data = content.get("data", {})
                text = data.get("text/plain")
                others = sorted(k for k in data if k != "text/plain")
                if text:
                    buf.add(text if text.endswith("\n") else text + "\n")
                if any(k.startswith("image/") for k in others):
                    buf.add(f"[{', '.join(k for k in others if k.startswith('image/'))} output not shown]\n")
            elif kind == "error":
                if status == "ok":
                    status = "error"
                tb = "\n".join(content.get("traceback") or [f"{content.get('ename')}: {content.get('evalue')}"])
                buf.add(ANSI_RE.sub("", tb) + "\n")
            elif kind == "status" and content.get("execution_state") == "idle":
                done = True
        oom = self.sandbox.oom_kills() > oom_before  # read before a restart replaces the cgroup
        if status == "timeout":
            if done:
                notes.append(f"[timed out after {timeout:g} s: the code was interrupted; the kernel's state is kept]")
            else:
                notes.append(
                    f"[timed out after {timeout:g} s: the kernel did not stop when interrupted and was "
                    "restarted: variables and imports were lost; files are kept]"
                )
                await self._restart()
        if status == "crashed":
            code_ = await asyncio.to_thread(self._wait_exit)
            reason = _signal_name(code_)
            if code_ is not None and code_ - 128 == getattr(signal, "SIGXCPU", -1):
                reason += ", the CPU time limit"
            oom = oom or self.sandbox.oom_kills() > oom_before
            if oom:
                reason += f", {self._memory_limits()}"
                oom = False
            notes.append(
                f"[the Python kernel died ({reason}) and was restarted: variables and imports were lost; "
                "files are kept]"
            )
            await self._restart()
        if self.sandbox.disk_full():
            notes.append(
                f"[/mnt/data is full: the conversation's files may use {_size(self.config.limits.disk_bytes)} in all]"
            )
        if oom:
            notes.append(f"[{self._memory_limits()} was reached: the system killed a process of the code]")
        if self.client is not None and self.sandbox.alive:
            stopped = await asyncio.to_thread(self.sandbox.kill_strays)
            if stopped:
                notes.append(f"[stopped {stopped} process{'es' if stopped != 1 else ''} the code left running]")
                await self._run_quiet(_REAP)
        if self.work_path != WORK_MOUNT and not self.told_path:
            notes.append(f"[note: the folder /mnt/data is {self.work_path} here]")
            self.told_path = True
        out = buf.text()
        if not out.strip() and not notes:
            out = NO_OUTPUT
        text = out.rstrip("\n")
        if notes:
            text = (text + "\n" if text.strip() else "") + "\n".join(notes)
        return Execution(text, status, buf.total, notes)

    async def _reply_to(self, msg_id: str) -> float | None:
        """When the kernel's execute_reply to ``msg_id`` arrived (now), or None if not yet."""
        try:
            while True:
                reply = await self.client.get_shell_msg(timeout=0)
                if reply.get("parent_header", {}).get("msg_id") == msg_id:
                    return time.monotonic()
        except queue.Empty:
            return None

    def _interrupt(self) -> None:
        pid = self.sandbox.kernel_pid()
        if pid is not None:
            try:
                os.kill(pid, signal.SIGINT)
            except OSError:
                pass

    def _wait_exit(self) -> int | None:
        proc = self.sandbox.process
        if proc is None:
            return None
        try:
            return proc.wait(timeout=5)
        except Exception:  # noqa: BLE001
            return proc.poll()

    async def _restart(self) -> None:
        self.restarts += 1
        try:
            await self.start()
        except ToolError:
            await self.stop_kernel()  # the next call tries again and reports
