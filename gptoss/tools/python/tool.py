"""The ``python`` tool: code runs in a stateful Jupyter kernel (ipykernel), one per conversation.

- A timeout (120 s by default, as the system message tells the model): the kernel is interrupted, and
  restarted if the interrupt does not take, so the next call works.
- Output (stdout, stderr, results, tracebacks) truncated to ``max_output_chars`` with a clear marker.
- A working folder that plays the role of ``/mnt/data`` and lasts as long as the conversation.
- Limits on memory, CPU time, processes, files; no network and only its folder where the system allows
  it (see :mod:`gptoss.tools.python.sandbox`); processes the code leaves running are stopped when the call ends.
- A kernel that dies (``os._exit``, a segfault, the CPU limit) is restarted and the output says so.

``backend="docker"`` runs each call in a container instead (stateless; see
:class:`~gptoss.tools.python.docker.DockerRunner`).
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gptoss.harmony import ToolNamespaceConfig
from gptoss.tools.base import Tool, ToolCall, ToolError, ToolResult, tool_message
from gptoss.tools.python.docker import DockerRunner
from gptoss.tools.python.kernel import JupyterRunner, mark_swept
from gptoss.tools.python.limits import SandboxLimits
from gptoss.tools.python.output import Execution
from gptoss.tools.python.processes import host_tag
from gptoss.tools.python.sandbox import sweep_stale


@dataclass
class PythonConfig:
    timeout: float = 120.0
    max_output_chars: int = 8192
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    isolation: str = "auto"  # auto | bwrap | none  (see gptoss.tools.python.sandbox)
    backend: str = "jupyter"  # jupyter | docker
    work_dir: str | None = None  # None: a fresh temporary folder per conversation, removed at the end
    startup_timeout: float = 60.0
    interrupt_grace: float = 5.0
    docker_image: str = "python:3.11-slim"


class PythonTool(Tool):
    """The ``python`` namespace. One instance per conversation; the kernel starts on the first call."""

    name = "python"

    def __init__(self, config: PythonConfig | None = None, **overrides: Any):
        self.config = replace(config or PythonConfig(), **overrides)
        if self.config.backend not in ("jupyter", "docker"):
            raise ToolError(f"python backend: expected jupyter or docker, found {self.config.backend!r}")
        if self.config.timeout <= 0:
            raise ToolError(f"python timeout: expected a positive number of seconds, found {self.config.timeout}")
        self._own_work_dir = self.config.work_dir is None
        self._work_dir: Path | None = None
        self._runner: JupyterRunner | DockerRunner | None = None
        self.calls = 0

    @property
    def work_dir(self) -> Path:
        """The conversation's folder (``/mnt/data`` inside the sandbox); made on first use."""
        if self._work_dir is None:
            path = Path(self.config.work_dir or tempfile.mkdtemp(prefix=f"gptoss-data-{host_tag()}-")).resolve()
            path.mkdir(parents=True, exist_ok=True)
            self._work_dir = path
        return self._work_dir

    @property
    def runner(self) -> JupyterRunner | DockerRunner:
        if self._runner is None:
            if self.config.backend == "jupyter":
                self._runner = JupyterRunner(self.config, self.work_dir, own_work_dir=self._own_work_dir)
            else:
                self._runner = DockerRunner(self.config, self.work_dir)
        return self._runner

    def namespace(self) -> ToolNamespaceConfig:
        ns = ToolNamespaceConfig.python()
        if self.config.timeout != 120.0:
            ns.description = ns.description.replace(
                "after 120.0 seconds", f"after {float(self.config.timeout):.1f} seconds"
            )
        return ns

    def new_conversation(self) -> PythonTool:
        return PythonTool(replace(self.config, work_dir=None) if self._own_work_dir else self.config)

    def describe_call(self, call: ToolCall) -> dict[str, Any]:
        return {"code": self._code(call)}

    @staticmethod
    def _code(call: ToolCall) -> str:
        text = call.text
        # forgiving: some models wrap the code as {"code": "..."}
        if text.lstrip().startswith("{"):
            try:
                args = call.json_arguments()
                if isinstance(args.get("code"), str):
                    return args["code"]
            except Exception:  # noqa: BLE001, S110 - not JSON after all: the text is the code
                pass
        return text

    async def start(self) -> None:
        """Start the kernel now rather than on the first call."""
        async with self.runner.lock:
            await self.runner.start()

    async def execute(self, code: str, timeout: float | None = None) -> Execution:
        return await self.runner.execute(code, self.config.timeout if timeout is None else timeout)

    async def run(self, call: ToolCall) -> ToolResult:
        self.calls += 1
        code = self._code(call)
        try:
            result = await self.execute(code)
        except ToolError as exc:
            return ToolResult(
                [tool_message("python", f"Error: {exc}", call.channel)],
                status="failed",
                metadata={"code": code, "outputs": [{"type": "logs", "logs": str(exc)}]},
            )
        status = {"ok": "completed", "error": "completed", "timeout": "incomplete", "crashed": "failed"}[result.status]
        return ToolResult(
            [tool_message("python", result.output, call.channel)],
            status=status,
            metadata={
                "code": code,
                "outputs": [{"type": "logs", "logs": result.output}],
                "execution": result.status,
                "work_path": self.runner.work_path,
            },
        )

    def sweep_stale(self) -> list[str]:
        """Folders, mounts and cgroups (with what still ran in them) of sandboxes whose host died."""
        if self.config.backend != "jupyter":
            return []
        mark_swept()
        return sweep_stale()

    def isolation(self) -> dict[str, str]:
        """What the sandbox isolates (after the kernel started), in words."""
        if self.config.backend == "docker":
            return {"backend": "docker", "network": "none", "filesystem": "container, /mnt/data mounted"}
        return self.runner.sandbox.describe()

    def state(self) -> dict[str, Any]:
        return {"work_dir": str(self._work_dir) if self._work_dir else None, "calls": self.calls}

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.close()
            self._runner = None
        if self._own_work_dir and self._work_dir is not None:
            shutil.rmtree(self._work_dir, ignore_errors=True)
            self._work_dir = None
