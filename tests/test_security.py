"""Safe defaults, each asserted: safe YAML, weights-only torch.load (DeepSpeed's loads too), no
shell, services on 127.0.0.1, downloads checked by checksum.

The first three are static checks over every Python file of the repository (its `ast`), so a
new file that breaks a rule fails here; the rest run the real thing.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import http.server
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("hpsearch", "trainables", "reports", "search_spaces", "benchmarks", "tests")


def _sources() -> Iterator[tuple[Path, ast.Module]]:
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            yield path.relative_to(REPO), ast.parse(path.read_text(), filename=str(path))


def _dotted(node: ast.AST) -> str:
    """'yaml.load' for the expression yaml.load; '' when it is not a plain dotted name."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def _calls(tree: ast.Module) -> Iterator[ast.Call]:
    return (n for n in ast.walk(tree) if isinstance(n, ast.Call))


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_the_scan_sees_the_code():
    files = dict(_sources())
    assert Path("hpsearch/space.py") in files and Path("trainables/minbert/trainer.py") in files
    assert len(files) > 40


def test_yaml_is_only_ever_loaded_safely():
    """yaml.safe_load, or yaml.load / load_all with a SafeLoader subclass; never the full or
    unsafe loaders."""
    problems = []
    for path, tree in _sources():
        safe_classes = {"yaml.SafeLoader", "yaml.CSafeLoader"}
        for node in ast.walk(tree):  # this module's own SafeLoader subclasses
            if isinstance(node, ast.ClassDef) and any(
                _dotted(b) in safe_classes for b in node.bases
            ):
                safe_classes.add(node.name)
        for node in ast.walk(tree):
            name = _dotted(node) if isinstance(node, ast.Attribute) else ""
            if name in (
                "yaml.unsafe_load",
                "yaml.full_load",
                "yaml.full_load_all",
                "yaml.unsafe_load_all",
                "yaml.Loader",
                "yaml.UnsafeLoader",
                "yaml.FullLoader",
                "yaml.CLoader",
                "yaml.CUnsafeLoader",
            ):
                problems.append(f"{path}:{node.lineno}: {name}")
        for call in _calls(tree):
            if _dotted(call.func) in ("yaml.load", "yaml.load_all"):
                loader = _keyword(call, "Loader") or (call.args[1] if len(call.args) > 1 else None)
                if loader is None or _dotted(loader) not in safe_classes:
                    problems.append(
                        f"{path}:{call.lineno}: {_dotted(call.func)} without a SafeLoader"
                    )
    assert problems == []


def test_torch_load_is_always_weights_only():
    problems = []
    for path, tree in _sources():
        for call in _calls(tree):
            if _dotted(call.func) == "torch.load":
                flag = _keyword(call, "weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{path}:{call.lineno}: torch.load without weights_only=True")
            if _dotted(call.func) in (
                "pickle.load",
                "pickle.loads",
                "cloudpickle.load",
                "cloudpickle.loads",
                "dill.load",
                "dill.loads",
            ):
                problems.append(f"{path}:{call.lineno}: {_dotted(call.func)} runs arbitrary code")
    assert problems == []


def test_no_shell():
    """No shell=True, os.system, os.popen or subprocess.getoutput: argument lists only."""
    problems = []
    for path, tree in _sources():
        for call in _calls(tree):
            shell = _keyword(call, "shell")
            if shell is not None and not (
                isinstance(shell, ast.Constant) and shell.value is False
            ):
                problems.append(f"{path}:{call.lineno}: shell={ast.unparse(shell)}")
            if _dotted(call.func) in (
                "os.system",
                "os.popen",
                "subprocess.getoutput",
                "subprocess.getstatusoutput",
                "os.execl",
                "os.execlp",
            ):
                problems.append(f"{path}:{call.lineno}: {_dotted(call.func)}")
    assert problems == []


_AUTH_OPT_OUT_TESTS = {Path("tests/hpsearch/test_ray_auth.py")}  # an opt-out is overridden


def _disables_ray_auth(node: ast.AST) -> bool:
    """RAY_AUTH_MODE given a value Ray reads as authentication off (any string but "token":
    "disabled", "off", "" ...): a dict entry, environ[...] = ..., a call such as
    environ.setdefault(...) / putenv(...), or a keyword argument."""

    def is_const(n: ast.AST | None, value: str) -> bool:
        return isinstance(n, ast.Constant) and n.value == value

    def is_off(n: ast.AST | None) -> bool:
        return isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value != "token"

    if isinstance(node, ast.Dict):
        return any(
            is_const(k, "RAY_AUTH_MODE") and is_off(v)
            for k, v in zip(node.keys, node.values, strict=True)
        )
    if isinstance(node, ast.Assign):
        return is_off(node.value) and any(
            isinstance(t, ast.Subscript) and is_const(t.slice, "RAY_AUTH_MODE")
            for t in node.targets
        )
    if isinstance(node, ast.Call):
        positional = (
            len(node.args) >= 2
            and is_const(node.args[0], "RAY_AUTH_MODE")
            and is_off(node.args[1])
        )
        return positional or is_off(_keyword(node, "RAY_AUTH_MODE"))
    return False


def test_ray_token_authentication_is_never_turned_off():
    """No code, test environment, Makefile, CI script or cluster file sets RAY_AUTH_MODE to
    anything but `token` (only the tests of the opt-out's override do, on purpose)."""
    problems = [
        f"{path}:{node.lineno}"
        for path, tree in _sources()
        if path not in _AUTH_OPT_OUT_TESTS
        for node in ast.walk(tree)
        if _disables_ray_auth(node)
    ]
    for name in ("Makefile", "cluster.yaml", ".ci/run"):  # what runs (comments aside)
        for number, line in enumerate((REPO / name).read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if re.search(
                r"RAY_AUTH_MODE\s*[?:]?=\s*(?![\"']?token\b)|RAY_AUTH_MODE:\s*(?!token\b)", code
            ):
                problems.append(f"{name}:{number}")
    assert problems == []


# ---------------------------------------------------------------------------- runtime checks
def test_deepspeed_checkpoints_are_read_weights_only(tmp_path):
    """DeepSpeed's own loader unpickles with weights_only=False; ours routes it through the
    weights-only unpickler, so a tampered checkpoint (even one re-sealed with a matching
    manifest) is refused and its payload never runs."""
    from trainables.errors import ConfigError
    from trainables.minbert.config import load_trial_config
    from trainables.minbert.run_checkpoint import MANIFEST as CHECKPOINT_MANIFEST
    from trainables.minbert.trainer import MultitaskTrainer, train_trial

    cfg = load_trial_config(
        REPO / "trainables" / "configs" / "tiny.yaml",
        ["train.max_steps=2", "train.evals_per_epoch=1"],
    )
    run = tmp_path / "run"
    train_trial(cfg, run)
    ckpt = next((run / "checkpoints").glob("step-*"))
    victim = next(ckpt.glob("*model_states.pt"))
    marker = tmp_path / "payload-ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    import torch

    state = torch.load(victim, weights_only=True)
    state["extra"] = Payload()
    torch.save(state, victim)
    manifest = json.loads((ckpt / CHECKPOINT_MANIFEST).read_text())
    manifest["files"][victim.name] = hashlib.sha256(victim.read_bytes()).hexdigest()
    (ckpt / CHECKPOINT_MANIFEST).write_text(json.dumps(manifest))

    trainer = MultitaskTrainer(cfg, tmp_path / "resumed", resume_from=ckpt)
    try:
        with pytest.raises(ConfigError, match="refused rather than unpickled"):
            trainer.setup()
    finally:
        trainer.cleanup()
    assert not marker.exists()


def _listening(pid: int) -> list[tuple[str, int]]:
    import psutil

    proc = psutil.Process(pid)
    found = []
    for p in [proc, *proc.children(recursive=True)]:
        try:
            found += [
                (c.laddr.ip, c.laddr.port)
                for c in p.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN
            ]
        except psutil.Error:
            pass
    return found


def test_tensorboard_listens_on_loopback_only_by_default(tmp_path):
    from hpsearch.tensorboard import start_tensorboard

    with start_tensorboard(tmp_path) as tb:
        sockets = _listening(tb.process.pid)
        assert tb.host == "127.0.0.1" and tb.url.startswith("http://127.0.0.1:")
    assert sockets and all(ip == "127.0.0.1" for ip, _ in sockets), sockets


_RAY_PROBE = """
import json, os, sys
import psutil, ray
from hpsearch.driver import init_ray
init_ray(None, 1)
node = ray._private.worker.global_worker.node
procs = [psutil.Process(), *psutil.Process().children(recursive=True)]
listening = []
for p in procs:
    try:
        listening += [[c.laddr.ip, c.laddr.port, " ".join(p.cmdline())[:200]]
                      for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    except psutil.Error:
        pass
print(json.dumps({"webui_url": node.address_info.get("webui_url"),
                  "cmdlines": [" ".join(p.cmdline())[:300] for p in procs if p.is_running()],
                  "listening": listening}))
ray.shutdown()
"""


def test_local_ray_dashboard_is_off_and_bound_to_loopback(tmp_path, child_environ):
    """The sweep's local Ray: no dashboard web UI (webui_url empty), and Ray's dashboard
    process, which Ray starts anyway for its internal APIs, is told --host=127.0.0.1 and
    listens on no other address. (Ray's own GCS and raylet ports listen on all interfaces
    whatever the options: see docs/RELIABILITY.md.)"""
    ray_tmp = tempfile.mkdtemp(prefix="hps-ray-")  # short: Ray's socket paths must fit 107 bytes
    env = {**child_environ, "RAY_TMPDIR": ray_tmp}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _RAY_PROBE],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not info["webui_url"], info["webui_url"]
    dashboards = [c for c in info["cmdlines"] if "dashboard/dashboard.py" in c]
    assert all("--host=127.0.0.1" in c for c in dashboards), dashboards
    for ip, port, cmdline in info["listening"]:
        if "dashboard" in cmdline or port == 8265:
            assert ip in ("127.0.0.1", "::1"), (ip, port, cmdline)
    # and the code that starts a local Ray asks for exactly that (read from the source, so
    # that the check does not depend on where in hpsearch/ the call lives or how it is wrapped)
    local_inits = []
    for path in sorted((REPO / "hpsearch").glob("*.py")):
        for call in _calls(ast.parse(path.read_text())):
            func = call.func
            if (
                isinstance(func, ast.Attribute)
                and func.attr == "init"
                and isinstance(func.value, ast.Name)
                and func.value.id == "ray"
                and _keyword(call, "address") is None
            ):
                local_inits.append(call)
    assert local_inits, "no local ray.init(...) found under hpsearch/"
    for call in local_inits:
        dashboard, host = _keyword(call, "include_dashboard"), _keyword(call, "dashboard_host")
        assert isinstance(dashboard, ast.Constant) and dashboard.value is False
        assert isinstance(host, ast.Constant) and host.value == "127.0.0.1"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass


def test_data_download_is_verified_by_checksum(tmp_path, child_environ):
    """`hpsearch data download` from a mirror serving altered files: refused, nothing kept."""
    from trainables.minbert.download import CS224N_FILES

    served = tmp_path / "served" / "data"
    served.mkdir(parents=True)
    for name in CS224N_FILES:
        (served / name).write_text("id\tsentence\tsentiment\n0\ttampered\t4\n")
    handler = functools.partial(_QuietHandler, directory=str(tmp_path / "served"))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    dest = tmp_path / "dest"
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "hpsearch.cli",
                "data",
                "download",
                "--dest",
                str(dest),
                "--base-url",
                f"http://127.0.0.1:{server.server_address[1]}/data/",
            ],
            cwd=tmp_path,
            env=child_environ,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "checksum mismatch" in proc.stderr
    assert not dest.exists()
    shutil.rmtree(served)
