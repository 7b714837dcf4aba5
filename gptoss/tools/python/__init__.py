"""The ``python`` tool: model-written code in a stateful Jupyter kernel, one per conversation, in a sandbox.

- :mod:`.tool`: the tool (``PythonTool``, ``PythonConfig``); :mod:`.kernel` and :mod:`.docker`: its runners
  (a sandboxed Jupyter kernel, or a container); :mod:`.output`: what a call returns.
- :mod:`.sandbox`: the host side of one sandbox (launching, the process tree, folders handed over safely,
  freezing between calls, closing) and the sweep of what a host that died left.
- :mod:`.launcher`: what runs inside it first (namespaces, private root, limits, the reaper); standard
  library only, run from its source text.
- :mod:`.cgroups`, :mod:`.mounts`, :mod:`.processes`, :mod:`.limits`: the mechanisms, one concern each.
"""

from gptoss.tools.python.limits import SandboxLimits
from gptoss.tools.python.output import Execution
from gptoss.tools.python.tool import PythonConfig, PythonTool

__all__ = ["Execution", "PythonConfig", "PythonTool", "SandboxLimits"]
