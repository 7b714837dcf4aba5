"""``backend="docker"``: each call in one container per conversation instead of a sandboxed kernel."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from gptoss.tools.base import ToolError
from gptoss.tools.python.output import ANSI_RE, NO_OUTPUT, Execution, truncate
from gptoss.tools.python.sandbox import WORK_MOUNT

if TYPE_CHECKING:
    from gptoss.tools.python.tool import PythonConfig


class DockerRunner:
    """Each call runs ``python -`` in one container per conversation (``docker run --network none``,
    memory, CPU and process limits, the working folder mounted at /mnt/data). Variables do not persist
    between calls; files in /mnt/data do. Needs a running Docker engine."""

    def __init__(self, config: PythonConfig, work_dir: Path):
        self.config = config
        self.work_dir = work_dir
        self.work_path = WORK_MOUNT
        self.container: str | None = None
        self.lock = asyncio.Lock()

    async def _docker(self, *args: str, stdin: bytes | None = None, timeout: float = 60.0) -> tuple[int, str]:
        exe = shutil.which("docker")
        if exe is None:
            raise ToolError("python: backend 'docker' needs the docker command, which is not installed")
        proc = await asyncio.create_subprocess_exec(
            exe, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(stdin), timeout)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()
            return 124, ""
        return proc.returncode, out.decode(errors="replace")

    async def start(self) -> None:
        code, out = await self._docker("info", "--format", "{{.ServerVersion}}", timeout=20)
        if code != 0:
            raise ToolError(
                "python: backend 'docker' needs a running Docker engine, but `docker info` failed: "
                + (out.strip().splitlines() or ["no answer"])[-1]
            )
        lim = self.config.limits
        args = [
            "run",
            "-d",
            "--rm",
            "--network",
            "none",
            "--cpus",
            "1",
            "-v",
            f"{self.work_dir}:{WORK_MOUNT}",
            "-w",
            WORK_MOUNT,
            "--read-only",
            "--tmpfs",
            f"/tmp:size={lim.tmp_size}",
        ]
        if lim.memory_bytes:
            args += ["--memory", str(lim.memory_bytes)]
        if lim.processes:
            args += ["--pids-limit", str(lim.processes)]
        code, out = await self._docker(*args, self.config.docker_image, "sleep", "infinity", timeout=600)
        if code != 0:
            raise ToolError(f"python: could not start a container from {self.config.docker_image}: {out.strip()}")
        self.container = out.strip().splitlines()[-1]

    async def execute(self, code: str, timeout: float) -> Execution:
        async with self.lock:
            if self.container is None:
                await self.start()
            rc, out = await self._docker(
                "exec",
                "-i",
                self.container,
                "timeout",
                "-s",
                "KILL",
                str(int(timeout)),
                "python",
                "-",
                stdin=code.encode(),
                timeout=timeout + 30,
            )
            status = "ok" if rc == 0 else ("timeout" if rc in (124, 137) else "error")
            text = truncate(ANSI_RE.sub("", out), self.config.max_output_chars).rstrip("\n") or NO_OUTPUT
            if status == "timeout":
                text += f"\n[timed out after {timeout:g} s]"
            return Execution(text, status, len(out))

    async def close(self) -> None:
        if self.container is not None:
            await self._docker("rm", "-f", self.container, timeout=30)
            self.container = None
