"""Warnings about the shell commands a cluster file runs on its nodes (never fatal).

`command_warnings` reads every setup and start command (top level and per node type) and
warns when the Ray dashboard or TensorBoard would listen beyond loopback (neither has a login)
and when the start commands never run `ray start --head` / `ray start --address`.
"""

from __future__ import annotations

import ipaddress
import shlex
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from hpsearch.cluster_document import KeyPath, format_key_path

__all__ = ["command_warnings"]

_COMMAND_KEYS = (
    "initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
    "head_start_ray_commands", "worker_start_ray_commands",
)  # fmt: skip
_NODE_TYPE_COMMAND_KEYS = ("initialization_commands", "worker_setup_commands")


def command_warnings(data: Mapping[str, Any]) -> list[str]:
    """One line per exposed service or missing `ray start`, over a schema-valid cluster file."""
    warnings = []
    for key_path, cmd in _commands(data):
        where = format_key_path(key_path)
        words = _shell_words(cmd)
        for host in _option_values(words, "--dashboard-host"):
            if not _is_loopback(host):
                warnings.append(
                    f"{where}: the Ray dashboard listens on {host}; it runs jobs for "
                    "anyone who reaches port 8265; use --dashboard-host=127.0.0.1 and "
                    "`ray dashboard cluster.yaml`"
                )
        if "tensorboard" in cmd:
            hosts = _option_values(words, "--host")
            if "--bind_all" in words or any(not _is_loopback(h) for h in hosts):
                warnings.append(
                    f"{where}: TensorBoard is exposed beyond 127.0.0.1; it has no login; "
                    "forward the port over ssh instead"
                )
    for key, needle in (
        ("head_start_ray_commands", "--head"),
        ("worker_start_ray_commands", "--address"),
    ):
        cmds = data.get(key)
        if cmds and not any("ray start" in c and needle in c for c in cmds):
            warnings.append(f"{key} never runs `ray start {needle} ...`")
    return warnings


def _commands(data: Mapping[str, Any]) -> Iterator[tuple[KeyPath, str]]:
    """Every command with its key path, top-level lists first, then per node type."""
    for key in _COMMAND_KEYS:
        for index, cmd in enumerate(data.get(key) or []):
            yield (key, index), cmd
    for name, spec in (data.get("available_node_types") or {}).items():
        for key in _NODE_TYPE_COMMAND_KEYS:
            for index, cmd in enumerate(spec.get(key) or []):
                yield ("available_node_types", name, key, index), cmd


def _is_loopback(host: str) -> bool:
    host = host.strip("'\"[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _shell_words(cmd: str) -> list[str]:
    try:
        return shlex.split(cmd.replace(";", " ; "))
    except ValueError:  # unbalanced quotes: fall back to whitespace
        return cmd.split()


def _option_values(words: Sequence[str], option: str) -> list[str]:
    """Values of `--opt=value` and `--opt value` among shell words."""
    values = []
    for index, word in enumerate(words):
        if word.startswith(option + "="):
            values.append(word.split("=", 1)[1])
        elif word == option and index + 1 < len(words):
            values.append(words[index + 1])
    return values
