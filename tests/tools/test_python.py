"""The python tool: a stateful, sandboxed Jupyter kernel per conversation."""

import asyncio
import os
import socket
import threading
import time

import pytest

from gptoss.harmony import Message, Role
from gptoss.tools.base import ToolCall, ToolError
from gptoss.tools.python import PythonTool, SandboxLimits
from gptoss.tools.python.processes import descendants

PROCESS_LIMIT = 48
MEMORY_LIMIT = 1024 * 2**20


@pytest.fixture(scope="module")
def loop():
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def py(loop):
    tool = PythonTool(
        timeout=4,
        max_output_chars=2000,
        interrupt_grace=4,
        limits=SandboxLimits(memory_bytes=MEMORY_LIMIT, processes=PROCESS_LIMIT),
    )
    loop.run_until_complete(tool.start())
    yield tool
    loop.run_until_complete(tool.aclose())


def run(loop, tool, code, **kw):
    return loop.run_until_complete(tool.execute(code, **kw))


def test_state_persists_between_calls(loop, py):
    assert run(loop, py, "x = 6 * 7\nprint('set')").output == "set"
    r = run(loop, py, "x + 1")
    assert r.output == "43" and r.status == "ok"
    assert run(loop, py, "import math\ndef f(n): return math.factorial(n)").output.startswith("[no output")
    assert run(loop, py, "print(f(5), x)").output == "120 42"


def test_call_through_the_tool_interface(loop, py):
    call = (
        Message.from_role_and_content(Role.ASSISTANT, "print('hi from the tool')")
        .with_recipient("python")
        .with_channel("analysis")
        .with_content_type("code")
    )
    messages = loop.run_until_complete(py.call(call))
    assert len(messages) == 1
    m = messages[0]
    assert m.author.role is Role.TOOL and m.author.name == "python" and m.recipient == "assistant"
    assert m.channel == "analysis" and m.text == "hi from the tool"
    # errors come back as the traceback, the kernel keeps going
    result = loop.run_until_complete(py.run(ToolCall(call.adding_content("\n1/0"))))
    assert "ZeroDivisionError" in result.output and result.status == "completed"
    assert result.metadata["execution"] == "error"


def test_infinite_loop_times_out_and_the_next_call_works(loop, py):
    run(loop, py, "kept = 'still here'")
    t0 = time.monotonic()
    r = run(loop, py, "while True:\n    pass", timeout=2)
    elapsed = time.monotonic() - t0
    assert r.status == "timeout" and "timed out after 2 s" in r.output
    assert elapsed < 2 + 4 + 5
    r = run(loop, py, "print(kept)")
    assert r.status == "ok" and r.output == "still here"  # interrupted, not restarted: state kept


def test_uninterruptible_code_is_restarted_after_timeout(loop, py):
    # SIGINT is ignored: the interrupt cannot take, so the kernel is restarted and the next call works
    r = run(
        loop,
        py,
        "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: time.sleep(0.1)",
        timeout=1,
    )
    assert r.status == "timeout" and "restarted" in r.output
    r = run(loop, py, "print('alive')")
    assert r.output == "alive"


def test_far_more_memory_than_the_limit_fails_inside_the_tool(loop, py):
    before = _rss_of_this_process()
    r = run(loop, py, "big = bytearray(16 * 2**30)")
    assert r.status == "error" and "MemoryError" in r.output
    r = run(
        loop,
        py,
        "chunks = []\ntry:\n    while True:\n        chunks.append(bytearray(64 * 2**20))\n"
        "except MemoryError:\n    n = len(chunks); del chunks\n    print('stopped at', n * 64, 'MiB')",
        timeout=60,
    )
    assert r.output.startswith("stopped at")
    assert int(r.output.split()[2]) <= MEMORY_LIMIT // 2**20
    assert run(loop, py, "print('fine')").output == "fine"
    assert _rss_of_this_process() - before < 200 * 2**20  # the server (this process) did not grow


def _rss_of_this_process() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_fork_bomb_is_contained(loop, py):
    sandbox = py.runner.sandbox
    peak = {"n": 0}
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            if sandbox.process is not None:
                peak["n"] = max(peak["n"], len(descendants(sandbox.process.pid)))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    t0 = time.monotonic()
    try:
        # a shell fork bomb left running in the background, and a Python one in the kernel itself
        r1 = run(
            loop,
            py,
            "import subprocess, time\n"
            "subprocess.Popen(['sh', '-c', 'b() { b | b & }; b'], stderr=subprocess.DEVNULL)\ntime.sleep(2)\n"
            "print('bombed')",
        )
        r2 = run(loop, py, "import os\nwhile True:\n    os.fork()")
    finally:
        stop.set()
        watcher.join()
    assert time.monotonic() - t0 < 40
    assert r1.output.startswith("bombed")
    assert "BlockingIOError" in r2.output or "stopped" in r2.output
    # the process limit held: the tree never grew past it (+ the launcher, which is not the sandbox's user)
    assert 0 < peak["n"] <= PROCESS_LIMIT + 2
    # everything the bombs started is gone, and the kernel can start processes again
    assert sandbox.strays() == []
    r = run(
        loop,
        py,
        "import subprocess\nprint(subprocess.run(['echo', 'ok'], capture_output=True, text=True).stdout.strip())",
    )
    assert r.output == "ok"


def test_processes_left_running_are_stopped_when_the_call_ends(loop, py):
    r = run(
        loop, py, "import subprocess\nfor _ in range(3):\n    subprocess.Popen(['sleep', '1000'])\nprint('started')"
    )
    assert r.output == "started\n[stopped 3 processes the code left running]"
    assert py.runner.sandbox.strays() == []


def test_long_output_is_truncated(loop, py):
    r = run(loop, py, "for i in range(5000):\n    print(f'line {i:05d}')")
    assert len(r.output) < 2200
    assert r.output.startswith("line 00000")
    assert r.output.rstrip().endswith("line 04999")
    assert "characters truncated" in r.output
    assert r.raw_chars == 5000 * 11


def test_a_file_written_in_one_call_is_read_in_the_next(loop, py):
    r = run(loop, py, "with open('/mnt/data/notes.txt', 'w') as f:\n    f.write('persisted 123')\nprint('written')")
    assert r.output == "written"
    r = run(loop, py, "print(open('/mnt/data/notes.txt').read())")
    assert r.output == "persisted 123"
    assert (py.work_dir / "notes.txt").read_text() == "persisted 123"  # the folder the caller sees
    r = run(loop, py, "import os\nprint(os.getcwd())")
    assert r.output == py.runner.work_path


def test_a_crashed_kernel_is_restarted(loop, py):
    run(loop, py, "lost = 1")
    r = run(loop, py, "import os\nos._exit(3)")
    assert r.status == "crashed" and "exit status 3" in r.output and "restarted" in r.output
    r = run(loop, py, "print('lost' in dir())")
    assert r.output == "False"
    r = run(loop, py, "import ctypes\nctypes.string_at(0)")
    assert r.status == "crashed" and "SIGSEGV" in r.output
    assert run(loop, py, "print(1 + 1)").output == "2"


def test_isolation_on_this_machine(loop, py):
    """What the sandbox isolates here, each claim of the report checked from inside."""
    report = py.isolation()
    r = run(loop, py, "import os\nprint(os.getuid())")
    if os.geteuid() == 0:
        if report["user"].startswith("root"):  # documented fallback: no private root and Python not readable by all
            assert "pids cgroup" in report["processes"] and r.output == "0"
        else:
            assert report["user"].startswith("unprivileged uid") and r.output not in ("0", "")
    # the environment of the server (API keys...) is not passed on
    os.environ["GPTOSS_TEST_SECRET"] = "s3cret"
    try:
        assert run(loop, py, "import os\nprint(os.environ.get('GPTOSS_TEST_SECRET'))").output == "None"
    finally:
        del os.environ["GPTOSS_TEST_SECRET"]
    # network: a server on this machine's loopback
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        r = run(
            loop,
            py,
            f"import socket\ns = socket.socket()\ns.settimeout(2)\ntry:\n    s.connect(('127.0.0.1', {port}))\n"
            "    print('connected')\nexcept OSError as e:\n    print('refused', type(e).__name__)",
        )
    finally:
        server.close()
    if report["network"] == "host":
        assert r.output == "connected"  # documented fallback: no network isolation on this system
    else:
        assert report["network"] in ("none", "loopback only") and r.output.startswith("refused")
    # file system: this test file is outside the sandbox's folder
    r = run(loop, py, f"import os\nprint(os.path.exists({__file__!r}), os.path.exists('/mnt/data'))")
    if report["filesystem"].startswith("private root"):
        assert r.output == "False True" and report["work_path"] == "/mnt/data"
    else:
        assert report["filesystem"] == "host"
    # a few processes are fine
    r = run(
        loop, py, "import subprocess\nprint(subprocess.run(['sh', '-c', 'echo $$'], capture_output=True).returncode)"
    )
    assert r.output == "0"


def test_cpu_time_limit_restarts_the_kernel_and_a_given_folder_is_handed_back(loop, tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "input.csv").write_text("a,b\n1,2\n")
    before = folder.stat()
    tool = PythonTool(timeout=60, work_dir=str(folder), limits=SandboxLimits(cpu_seconds=3, processes=PROCESS_LIMIT))
    try:
        r = loop.run_until_complete(
            tool.execute(
                "print(open('/mnt/data/input.csv').read().split()[1])\n_ = open('/mnt/data/out.txt', 'w').write('done')"
            )
        )
        assert r.output.startswith("1,2")
        r = loop.run_until_complete(tool.execute("while True:\n    pass"))
        assert r.status == "crashed" and "SIGXCPU" in r.output and "CPU time limit" in r.output
        assert loop.run_until_complete(tool.execute("print('next')")).output == "next"
        assert tool.isolation()["cpu"].startswith("RLIMIT_CPU 3 s")
    finally:
        loop.run_until_complete(tool.aclose())
    # the caller's folder is kept, and it and what the code wrote belong to the caller again
    after = folder.stat()
    assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)
    assert (folder / "out.txt").read_text() == "done" and (folder / "out.txt").stat().st_uid == before.st_uid


def test_configured_timeout_is_what_the_system_message_says():
    assert "time out after 120.0 seconds" in PythonTool().namespace().description
    tool = PythonTool(timeout=30)
    assert "time out after 30.0 seconds" in tool.namespace().description
    with pytest.raises(ToolError, match="timeout"):
        PythonTool(timeout=0)


def test_docker_backend_without_an_engine_is_a_clear_error(loop, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    tool = PythonTool(backend="docker")
    try:
        with pytest.raises(ToolError, match="docker"):
            loop.run_until_complete(tool.start())
        call = Message.from_role_and_content(Role.ASSISTANT, "print(1)").with_recipient("python")
        result = loop.run_until_complete(tool.run(ToolCall(call)))
        assert result.status == "failed" and "Docker engine" in result.output or "docker command" in result.output
    finally:
        loop.run_until_complete(tool.aclose())
    with pytest.raises(ToolError, match="jupyter or docker"):
        PythonTool(backend="podman")


def test_without_namespaces_the_report_says_what_is_left(loop, tmp_path):
    """isolation="none": limits and process cleanup only; the report must not claim more."""
    tool = PythonTool(
        timeout=10,
        isolation="none",
        work_dir=str(tmp_path / "data"),
        limits=SandboxLimits(memory_bytes=MEMORY_LIMIT, processes=PROCESS_LIMIT),
    )
    try:
        r = loop.run_until_complete(
            tool.execute("import os\nprint(os.getcwd())\n_ = open('/mnt/data/x.txt', 'w').write('ok')")
        )
        report = tool.isolation()
        assert report["network"] == "host" and report["filesystem"] == "host" and report["pid_namespace"] == "no"
        assert r.output == f"{tmp_path / 'data'}\n[note: the folder /mnt/data is {tmp_path / 'data'} here]"
        # '/mnt/data' in code still means the conversation's folder
        assert (tmp_path / "data" / "x.txt").read_text() == "ok"
        if os.geteuid() == 0:
            assert report["user"].startswith("root")
            assert "pids cgroup" in report["processes"] or report["processes"] == "no limit"
        else:
            assert "RLIMIT_NPROC" in report["processes"]
        r = loop.run_until_complete(tool.execute("b = bytearray(16 * 2**30)"))
        assert "MemoryError" in r.output
    finally:
        loop.run_until_complete(tool.aclose())
    assert (tmp_path / "data" / "x.txt").exists()  # a folder given by the caller is kept


def test_bubblewrap_isolation_where_installed(loop):
    """isolation="bwrap": the kernel runs under bubblewrap when it is installed; otherwise a clear error."""
    import shutil

    tool = PythonTool(
        timeout=10, isolation="bwrap", limits=SandboxLimits(memory_bytes=MEMORY_LIMIT, processes=PROCESS_LIMIT)
    )
    try:
        if shutil.which("bwrap") is None:
            with pytest.raises(ToolError, match="bubblewrap"):
                loop.run_until_complete(tool.start())
            return
        r = loop.run_until_complete(tool.execute(f"import os\nprint(os.getcwd(), os.path.exists({__file__!r}))"))
        assert r.output == "/mnt/data False"
        report = tool.isolation()
        assert report["filesystem"] == "private root (bubblewrap)" and report["pid_namespace"] == "yes"
    finally:
        loop.run_until_complete(tool.aclose())


def _host_files(tmp_path):
    """Root-only host files and a host folder the sandbox's code will aim at."""
    files = {}
    for name in ("log", "config", "launcher", "status", "kernel"):
        p = tmp_path / f"secret-{name}"
        p.write_text(f"host {name} content\n")
        os.chmod(p, 0o600)
        files[name] = p
    folder = tmp_path / "host-folder"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    return files, folder


def _snapshot(paths):
    out = {}
    for p in paths:
        st = os.lstat(p)
        out[str(p)] = (st.st_uid, st.st_gid, st.st_mode, p.read_bytes() if p.is_file() else None)
    return out


def test_links_and_fifos_planted_in_the_state_folder_are_never_followed(loop, tmp_path):
    """Attack: the code replaces every name of its state folder the host once opened (launcher.log,
    sandbox.json, the launcher script, the status files, the connection file, home) with links to root-only
    host files and folders, then FIFOs, then swaps its sockets for links to a host socket; each time it kills
    its kernel. No host file or folder may change, the host never connects to its socket, every call returns."""
    files, folder = _host_files(tmp_path)
    watched = [*files.values(), folder]
    before = _snapshot(watched)
    host_socket = socket.socket(socket.AF_UNIX)
    host_socket.bind(str(tmp_path / "host.sock"))
    host_socket.listen(8)
    host_socket.setblocking(False)
    names = {
        "launcher.log": files["log"],
        "sandbox.json": files["config"],
        "_sandbox_launch.py": files["launcher"],
        "status.json.tmp": files["status"],
        "status.json": files["status"],
        "kernel.json": files["kernel"],
    }
    plant_links = (
        "import os, shutil\ns = os.path.dirname(os.environ['HOME'])\n"
        + "".join(
            f"try:\n    os.unlink(os.path.join(s, {n!r}))\nexcept OSError:\n    pass\n"
            f"os.symlink({str(t)!r}, os.path.join(s, {n!r}))\n"
            for n, t in names.items()
        )
        + f"shutil.rmtree(os.environ['HOME'])\nos.symlink({str(folder)!r}, os.environ['HOME'])\n"
        "print('planted')\nos._exit(1)"
    )
    plant_fifos = (
        "import os, shutil\ns = os.path.dirname(os.environ['HOME'])\nfor n in " + repr(list(names)) + ":\n"
        "    p = os.path.join(s, n)\n    if os.path.lexists(p):\n        os.unlink(p)\n    os.mkfifo(p)\n"
        f"shutil.rmtree(os.environ['HOME'])\nos.symlink({str(files['log'])!r}, os.environ['HOME'])\nos._exit(1)"
    )
    swap_sockets = (
        "import os\nh = os.environ['HOME']\nos.makedirs(h + '/.ipython/profile_default/startup', exist_ok=True)\n"
        "open(h + '/.ipython/profile_default/startup/00-swap.py', 'w').write('''\n"
        "import os, glob\nfor p in glob.glob(os.path.dirname(os.environ['HOME']) + '/k-*'):\n"
        f"    os.unlink(p); os.symlink({str(tmp_path / 'host.sock')!r}, p)\n''')\nos._exit(1)"
    )
    tool = PythonTool(timeout=10, startup_timeout=15, limits=SandboxLimits(processes=PROCESS_LIMIT))

    def call(code):
        return loop.run_until_complete(asyncio.wait_for(tool.execute(code), 60))

    try:
        assert call("print('up')").output == "up"
        for attack in (plant_links, plant_fifos):
            r = call(attack)  # the kernel dies: the host restarts it within this call
            assert r.status == "crashed" and "restarted" in r.output, r.output
            assert _snapshot(watched) == before
            r = call("import os\nprint(os.getuid(), os.path.isdir(os.environ['HOME']))")
            assert r.status == "ok" and r.output.endswith("True"), r.output
        call(swap_sockets)
        for _ in range(2):  # whichever wins the race, the call returns and the host socket is never reached
            r = call("print('after the swap')")
            assert r.output == "after the swap" or "socket" in r.output, r.output
    finally:
        loop.run_until_complete(tool.aclose())
    with pytest.raises(BlockingIOError):
        host_socket.accept()
    host_socket.close()
    assert _snapshot(watched) == before


def _cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_thread_left_spinning_burns_no_cpu_between_calls(loop, py):
    r = run(
        loop,
        py,
        "import threading\nstop_spinning = threading.Event()\ndef spin():\n    while not stop_spinning.is_set():\n"
        "        pass\nthreading.Thread(target=spin, daemon=True).start()\nprint('spinning')",
    )
    assert r.output == "spinning"
    pid = py.runner.sandbox.kernel_pid()
    used = _cpu_seconds(pid)
    time.sleep(1.0)
    assert _cpu_seconds(pid) - used < 0.1  # stopped between calls (it was ~1 s a second)
    r = run(loop, py, "stop_spinning.set()\nprint('next call runs')")
    assert r.output == "next call runs"


HOST_SCRIPT = """
import asyncio, json, sys
from gptoss.tools.python import PythonTool, SandboxLimits
from gptoss.tools.python.processes import descendants

async def main():
    tool = PythonTool(timeout=600, limits=SandboxLimits(processes=48))
    await tool.start()
    code = "import subprocess, time\\nsubprocess.Popen(['sleep', '1000'])\\ntime.sleep(1000)"
    task = asyncio.ensure_future(tool.execute(code))
    await asyncio.sleep(1.5)
    sb = tool.runner.sandbox
    pids = [sb.process.pid, *descendants(sb.process.pid)]
    cgroups = [c["path"] for c in getattr(sb, "cgroups", [])]
    dirs = [str(tool.runner.state_dir), str(tool.work_dir)]
    print(json.dumps({"pids": pids, "cgroups": cgroups, "dirs": dirs}), flush=True)
    await task

asyncio.run(main())
"""


def _gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_the_sandbox_dies_with_its_host_and_what_it_left_is_removed():
    """The host is SIGKILLed mid-call: launcher, reaper, kernel and the code's child die within seconds;
    its cgroups go with them, its folders at the next start (sweep_stale)."""
    import json
    import subprocess
    import sys

    host = subprocess.Popen([sys.executable, "-c", HOST_SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(host.stdout.readline())
    finally:
        host.kill()
        host.wait()
    assert len(info["pids"]) >= 4  # launcher, reaper, kernel, sleep
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not all(_gone(p) for p in info["pids"]):
        time.sleep(0.05)
    assert [p for p in info["pids"] if not _gone(p)] == []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(os.path.exists(c) for c in info["cgroups"]):
        time.sleep(0.05)
    assert [c for c in info["cgroups"] if os.path.exists(c)] == []
    assert all(os.path.isdir(d) for d in info["dirs"])
    from gptoss.tools.python.sandbox import sweep_stale

    removed = sweep_stale()
    assert set(info["dirs"]) <= set(removed) and not any(os.path.exists(d) for d in info["dirs"])


def _memory_cgroups_possible():
    """Can this process make a memory cgroup (root, the controller enabled, /sys/fs/cgroup writable)?"""
    from pathlib import Path

    base = Path("/sys/fs/cgroup")
    if os.geteuid() != 0:
        return False
    if (base / "cgroup.controllers").is_file():
        try:
            if "memory" not in (base / "cgroup.subtree_control").read_text().split():
                return False
        except OSError:
            return False
    elif not (base / "memory").is_dir():
        return False
    probe = (base if (base / "cgroup.controllers").is_file() else base / "memory") / f"gptoss-probe-{os.getpid()}"
    try:
        probe.mkdir()
    except OSError:
        return False
    probe.rmdir()
    return True


def test_the_whole_conversation_has_one_memory_limit(loop):
    """Several children, each within the per-process limit, together past the conversation's limit."""
    limit = 384 * 2**20
    tool = PythonTool(
        timeout=30, limits=SandboxLimits(memory_bytes=MEMORY_LIMIT, total_memory_bytes=limit, processes=PROCESS_LIMIT)
    )
    code = (
        "import subprocess, sys\nkids = [subprocess.Popen([sys.executable, '-c', "
        "'import time; b = bytes(1) * (150 * 2**20); time.sleep(1)']) for _ in range(4)]\n"
        "print(sorted(k.wait() for k in kids))"
    )
    try:
        r = loop.run_until_complete(tool.execute(code))
        report = tool.isolation()
        if "memory cgroup" not in report["memory"]:  # documented: no memory cgroup can be made here
            assert report["memory"].startswith("RLIMIT_AS") and not _memory_cgroups_possible()
            return
        peak_files = [
            os.path.join(c["path"], f)
            for c in tool.runner.sandbox.cgroups
            if "memory" in c["controllers"]
            for f in ("memory.peak", "memory.max_usage_in_bytes")
        ]
        peaks = [int(open(f).read()) for f in peak_files if os.path.exists(f)]
        assert peaks == [] or max(peaks) <= limit
        assert "-9" in r.output.splitlines()[0], r.output  # the OOM killer ended at least one child
        assert "memory limit of 384 MiB was reached" in r.output
        assert loop.run_until_complete(tool.execute("print('still here')")).output == "still here"
    finally:
        loop.run_until_complete(tool.aclose())


def test_a_python_in_a_venv_under_tmp_runs_the_kernel(tmp_path):
    """The private /tmp must not hide a Python (or a venv) that lives under /tmp."""
    import site
    import subprocess
    import sys
    import tempfile

    root = tempfile.mkdtemp(prefix="gptoss-test-venv-", dir="/tmp")
    try:
        subprocess.run(
            [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", f"{root}/venv"],
            check=True,
            timeout=60,
        )
        # --system-site-packages shows the BASE interpreter's packages; run from inside a venv, this test's
        # packages (ipykernel, an editable gptoss) are in that venv: the inner venv adds its site folders,
        # .pth files included (an editable install is one), as site.addsitedir does for its own.
        ours = site.getsitepackages() + ([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])
        inner = f"{root}/venv/lib/python{sys.version_info.major}.{sys.version_info.minor}/site-packages"
        with open(f"{inner}/gptoss-test-outer-site.pth", "w") as f:
            f.write("import site; " + "; ".join(f"site.addsitedir({d!r})" for d in ours if os.path.isdir(d)) + "\n")
        script = (
            "import asyncio\nfrom gptoss.tools.python import PythonTool\nasync def main():\n"
            "    t = PythonTool(timeout=20)\n    try:\n"
            "        r = await t.execute('import sys\\nprint(sys.executable)')\n        print(r.status, r.output)\n"
            "    finally:\n        await t.aclose()\nasyncio.run(main())"
        )
        repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        out = subprocess.run(
            [f"{root}/venv/bin/python", "-c", script],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "PYTHONPATH": repo},
        )
        assert out.stdout.strip() == f"ok {root}/venv/bin/python", out.stdout + out.stderr
    finally:
        import shutil

        shutil.rmtree(root, ignore_errors=True)


def test_the_whole_conversation_has_one_disk_limit(loop):
    """Several files, each within the per-file limit, together past the conversation's limit: in /mnt/data
    and in its home (the other folder it can write that the host keeps)."""
    tool = PythonTool(
        timeout=30,
        limits=SandboxLimits(memory_bytes=MEMORY_LIMIT, disk_bytes=64 * 2**20, tmp_size="32m", processes=PROCESS_LIMIT),
    )
    fill = (
        "import os\nwritten = 0\ntry:\n    for i in range(4):\n"
        "        with open(f'{folder}/part{{i}}.bin', 'wb') as f:\n"
        "            for _ in range(24):\n                written += f.write(bytes(2**20))\n"
        "except OSError as e:\n    print(e.strerror)\nprint(written // 2**20)"
    )
    try:
        r = loop.run_until_complete(tool.execute(fill.format(folder="/mnt/data")))
        home = loop.run_until_complete(tool.execute(fill.format(folder='{os.environ["HOME"]}')))
        report = tool.isolation()
        on_disk = sum(p.stat().st_size for p in tool.work_dir.iterdir())
        if "in all" not in report["disk"]:  # documented: no tmpfs can be mounted here: a bound per file only
            assert report["disk"].startswith("RLIMIT_FSIZE") and on_disk == 96 * 2**20
            assert os.geteuid() != 0 or any("not bounded" in n or "no bound" in n for n in tool.runner.sandbox.notes)
            return
        assert r.output.startswith("No space left on device"), r.output
        assert "/mnt/data is full: the conversation's files may use 64 MiB in all" in r.output
        assert on_disk <= 64 * 2**20
        assert home.output.startswith("No space left on device") and int(home.output.split("\n")[1]) <= 32, home.output
        r = loop.run_until_complete(
            tool.execute(
                "import os\nos.remove('/mnt/data/part0.bin')\nopen('/mnt/data/small.txt', 'w').write('fits again')"
            )
        )
        assert (tool.work_dir / "small.txt").read_text() == "fits again"
    finally:
        loop.run_until_complete(tool.aclose())


def test_a_huge_output_never_reaches_the_host_whole(loop, py):
    """One print of 100 MB keeps its head and tail; a 100 MB message the code sends itself (past the
    in-kernel cap) is dropped before this process reads it: the model is told, the next call works."""
    base = _rss_of_this_process()
    peak = {"rss": base}
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak["rss"] = max(peak["rss"], _rss_of_this_process())
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        r = run(loop, py, "print('x' * 100_000_000)\nprint('end')", timeout=30)
        assert r.output.startswith("xxx") and "characters truncated" in r.output and r.output.endswith("end"), r.output[
            -300:
        ]
        r = run(
            loop,
            py,
            "from IPython.display import display\ndisplay({'text/plain': 'y' * 100_000_000}, raw=True)",
            timeout=30,
        )
        assert "some output was dropped" in r.output and "yyy" not in r.output, r.output[-300:]
        assert run(loop, py, "print('next')").output == "next"
    finally:
        stop.set()
        sampler.join()
    assert peak["rss"] - base < 64 * 2**20


def _tree_cpu(sandbox) -> dict[int, float]:
    """CPU seconds of every process of the sandbox but the launcher (which must stay awake)."""
    out = {}
    for pid in descendants(sandbox.process.pid):
        try:
            out[pid] = _cpu_seconds(pid)
        except OSError:
            pass
    return out


FORKER = """import os, signal, threading, time
stop_forking = threading.Event()
def child():
    t = time.monotonic()
    while time.monotonic() - t < 3:
        os.kill(os.getppid(), signal.SIGCONT)  # try to wake a kernel stopped by a signal
    os._exit(0)
def forker():
    while not stop_forking.is_set():
        try:
            if os.fork() == 0:
                child()
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except OSError:
            pass
        time.sleep(0.003)
threading.Thread(target=forker, daemon=True).start()
time.sleep(0.3)
print('forking')"""


def test_the_whole_sandbox_is_frozen_between_calls(loop, py):
    """A daemon thread forks every 3 ms, each child spinning and sending SIGCONT to the kernel: between calls
    no process of the sandbox runs (no CPU time used, none started), and the next call runs again."""
    r = run(loop, py, FORKER)
    assert r.output.startswith("forking"), r.output
    sandbox = py.runner.sandbox
    before = _tree_cpu(sandbox)
    time.sleep(1.0)
    after = _tree_cpu(sandbox)
    assert set(after) <= set(before), "processes were started between calls"
    assert sum(after.values()) - sum(before[p] for p in after) < 0.05
    r = run(loop, py, "stop_forking.set()\nprint('thawed')")
    assert r.output.startswith("thawed"), r.output
    assert sandbox.strays() == []


def test_submounts_under_read_only_folders_are_read_only(tmp_path):
    """A tmpfs mounted inside a folder the sandbox sees read-only (here /usr/local/src, made in a private
    mount namespace of a child process, so the machine's own mounts are untouched) is read-only too."""
    import subprocess
    import sys

    if os.geteuid() != 0 or not os.path.isdir("/usr/local/src"):
        pytest.skip("needs root (to mount a tmpfs) and /usr/local/src")
    script = """
import asyncio, ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x00020000) == 0  # CLONE_NEWNS
assert libc.mount(None, b"/", None, (1 << 14) | (1 << 18), None) == 0  # MS_REC | MS_PRIVATE
assert libc.mount(b"tmpfs", b"/usr/local/src", b"tmpfs", 0, b"size=1m") == 0
open("/usr/local/src/marker", "w").write("host")
from gptoss.tools.python import PythonTool
async def main():
    t = PythonTool(timeout=20)
    try:
        r = await t.execute(
            "import os\\nprint(open('/usr/local/src/marker').read(), os.path.ismount('/usr/local/src'))\\n"
            "try:\\n    open('/usr/local/src/x', 'w')\\nexcept OSError as e:\\n    print(e.strerror)"
        )
        print(t.isolation()["filesystem"], "|", r.output.replace("\\n", "|"))
    finally:
        await t.aclose()
asyncio.run(main())
"""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": repo},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    filesystem, shown = out.stdout.strip().split(" | ")
    if not filesystem.startswith("private root"):  # documented fallback: no mount namespace here
        return
    assert shown == "host True|Read-only file system", shown


def test_one_memory_limit_across_kernel_restarts_and_one_budget_for_all_sandboxes(loop):
    """The conversation's files on its tmpfs stay charged to it when its kernel restarts: what they take is
    not available again to the new kernel. And all sandboxes together stay within the operator's budget."""
    from gptoss.tools.python.cgroups import set_sandboxes_memory

    mib = 2**20
    fill = (
        "with open('/mnt/data/big.bin', 'wb') as f:\n    for _ in range({}):\n        f.write(bytes(2**20))\n"
        "print('written')"
    )
    take = "b = bytes(1) * ({} * 2**20)\nprint('allocated')"
    one = PythonTool(
        timeout=60,
        limits=SandboxLimits(
            memory_bytes=2 * MEMORY_LIMIT, total_memory_bytes=192 * mib, disk_bytes=512 * mib, processes=PROCESS_LIMIT
        ),
    )
    other = PythonTool(
        timeout=60,
        limits=SandboxLimits(
            memory_bytes=2 * MEMORY_LIMIT,
            total_memory_bytes=512 * mib,
            processes=PROCESS_LIMIT,
            sandboxes_memory_bytes=288 * mib,
        ),
    )
    try:
        assert loop.run_until_complete(one.execute(fill.format(128))).output == "written"
        if "memory cgroup" not in one.isolation()["memory"]:  # documented: no memory cgroup can be made here
            assert not _memory_cgroups_possible()
            return
        r = loop.run_until_complete(one.execute("import os\nos._exit(1)"))
        assert r.status == "crashed" and "restarted" in r.output
        r = loop.run_until_complete(one.execute(take.format(100)))  # 128 + 100 MiB > 192 MiB
        assert r.status == "crashed" and "memory limit of 192 MiB" in r.output, r.output
        # another conversation, well within its own 512 MiB, but past the 288 MiB of all sandboxes with the
        # first one's files
        r = loop.run_until_complete(other.execute(take.format(128)))
        assert r.status == "crashed" and "memory limit" in r.output, r.output
    finally:
        loop.run_until_complete(one.aclose())
        loop.run_until_complete(other.aclose())
        set_sandboxes_memory(None)


def test_a_call_cancelled_while_the_kernel_starts_leaves_nothing(loop):
    """The caller goes away while the kernel is being launched (in a worker thread that cannot be stopped)
    and closes the tool at once: the close waits for the launch, then nothing of the sandbox is left."""
    import tempfile

    from gptoss.tools.python.processes import host_tag

    def left():
        tag = host_tag()
        folders = [
            n for n in os.listdir(tempfile.gettempdir()) if n.startswith((f"gptoss-py-{tag}-", f"gptoss-data-{tag}-"))
        ]
        with open("/proc/self/mountinfo") as f:
            mounts = [p for p in (line.split()[4] for line in f) if f"-{tag}-" in p]
        return folders, mounts, set(descendants(os.getpid()))

    before = left()
    for wait in (0.05, 0.3):
        tool = PythonTool(timeout=10, limits=SandboxLimits(processes=PROCESS_LIMIT))
        task = loop.create_task(tool.execute("print('never')"))
        loop.run_until_complete(asyncio.sleep(wait))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            loop.run_until_complete(task)
        loop.run_until_complete(tool.aclose())
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and left() != before:
            time.sleep(0.05)
        folders, mounts, procs = left()
        assert (folders, mounts) == before[:2] and procs <= before[2], (wait, folders, mounts, procs - before[2])


def _cgroup2_mount() -> str | None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[fields.index("-") + 1] == "cgroup2":
                return fields[4]
    return None


def test_a_v2_cgroup_freezes_its_processes_and_goes_with_them():
    """The v2 freezer (on this machine's cgroup2 mount, also where the controllers live in v1): a spinning
    process in the leaf uses no CPU while frozen, runs when thawed, and dies with its cgroup, frozen."""
    import subprocess
    import sys

    from gptoss.tools.python.cgroups import _remove_cgroup, _set_frozen

    root = _cgroup2_mount()
    if os.geteuid() != 0 or root is None:
        pytest.skip("needs root and a cgroup v2 mount")
    path = os.path.join(root, f"gptoss-python-test-{os.getpid()}")
    leaf = os.path.join(path, "k")
    os.makedirs(leaf)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        with open(os.path.join(leaf, "cgroup.procs"), "w") as f:
            f.write(str(spinner.pid))
        assert _set_frozen(leaf, True)
        used = _cpu_seconds(spinner.pid)
        time.sleep(0.5)
        assert _cpu_seconds(spinner.pid) - used < 0.02
        assert _set_frozen(leaf, False)
        deadline = time.monotonic() + 5
        while _cpu_seconds(spinner.pid) - used < 0.05 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _cpu_seconds(spinner.pid) - used >= 0.05
        assert _set_frozen(leaf, True)
        assert _remove_cgroup(path) and not os.path.exists(path)
        assert spinner.wait(timeout=5) == -9
    finally:
        if spinner.poll() is None:
            spinner.kill()
        _remove_cgroup(path)
