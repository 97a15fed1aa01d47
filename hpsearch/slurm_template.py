"""The batch script `hpsearch slurm` writes, and writing it.

The script is Ray's "Deploying on Slurm" pattern, one step a block, each with a comment, so
that it reads (and can be edited) as a plain bash script. `{{NAME}}` in TEMPLATE marks a value
filled in here, already quoted for bash; `render` refuses a template left with any. Everything
else is bash as it runs.
"""

from __future__ import annotations

import math
import re
import shlex
import sys
import time
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING

from hpsearch.settings import SweepSettings
from hpsearch.slurm_budget import STOP_MARGIN_S
from trainables.atomic import write_text_atomic
from trainables.errors import ConfigError

if TYPE_CHECKING:
    from hpsearch.slurm import JobPlan, SlurmJob

__all__ = [
    "TEMPLATE",
    "hpsearch_command",
    "option_flag",
    "render",
    "render_script",
    "sweep_options",
    "write_script",
]

DRIVER_STOP_S = 60  # after SIGINT, the driver's time to save the sweep before SIGTERM
START_WAIT_S = 300  # Ray's head, then every node, must be up within this
_WRITTEN_LINE = re.compile(r"^# Written by `hpsearch slurm` on .*$", re.MULTILINE)

TEMPLATE = r"""#!/bin/bash
# {{TITLE}}
# Written by `hpsearch slurm` on {{WRITTEN}}.
# A plain bash script: edit it freely, then submit it with sbatch (`hpsearch slurm ...
# --submit` did or does that for you).
#
#   sbatch {{SCRIPT}}
#   squeue --me                                  queued or running?
#   tail -f {{LOG_HINT}}
#   scancel --signal=USR1 --batch JOBID          stop it cleanly (Ray Tune saves the sweep)
#   {{RESUME_COMMAND}}
#                                                continue it in a new job (after a stop, a
#                                                cancellation or the time limit)
#
# The experiment folder is fixed here, so that a later job can continue it:
#   {{EXP_DIR}}
#
# One Ray node per SLURM node: the head on the first, a worker on each other one.
#SBATCH --job-name={{JOB_NAME}}
#SBATCH --nodes={{NODES}}
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task={{CPUS_PER_NODE}}
{{OPTIONAL_SBATCH}}#SBATCH --time={{TIME}}
#SBATCH --output={{LOG}}
# SLURM's warning before the time limit: SIGUSR1 to this shell {{STOP_MARGIN}} s ahead, time to stop
# the sweep and Ray cleanly (`hpsearch slurm --resume` then continues it).
#SBATCH --signal=B:USR1@{{STOP_MARGIN}}

set -uo pipefail
# Job control: a command started in the background keeps SIGINT (bash ignores it there
# otherwise), and SIGINT is how the driver is asked to stop as Ctrl-C would.
set -m

# The Python environment that wrote this script comes first (its hpsearch, ray and python).
export PATH={{BIN_DIR}}:"$PATH"
cd {{WORKDIR}} || exit 1
EXP_DIR={{EXP_DIR}}
echo "hpsearch: job $SLURM_JOB_ID, ${SLURM_JOB_NUM_NODES} node(s): $SLURM_JOB_NODELIST"
echo "hpsearch: experiment folder $EXP_DIR"

# 1. Ray's token. The head, every worker and the driver must hold the same one, and token
#    authentication stays on (RAY_AUTH_MODE=token for every `ray start` and the driver). Ray
#    reads RAY_AUTH_TOKEN, else the file RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token. The token
#    is read here, on the first node, and every srun step below gets it in its environment:
#    the other nodes need no copy of the file, with or without a shared home.
export RAY_AUTH_MODE=token
if [ -z "${RAY_AUTH_TOKEN:-}" ]; then
    TOKEN_FILE="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
    if [ ! -s "$TOKEN_FILE" ]; then
        echo "error: no Ray token at $TOKEN_FILE on $(hostname): run \`ray get-auth-token --generate\` where you submit (a shared home makes it visible here), or submit with RAY_AUTH_TOKEN_PATH=FILE on a filesystem every node sees (docs/CLUSTER.md)" >&2
        exit 2
    fi
    RAY_AUTH_TOKEN="$(<"$TOKEN_FILE")"
    export RAY_AUTH_TOKEN
    unset RAY_AUTH_TOKEN_PATH
fi

# 2. Where Ray runs. The head's address is the first node's; the ports and Ray's folder on
#    each node belong to this job, so that two jobs sharing a node never meet. The trials run
#    at normal priority on the job's CPUs (Ray's default, niceness 15, starves them beside any
#    busy process), and Ray stops at once when told to (the trials are stopped before).
mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
HEAD_NODE="${NODES[0]}"
HEAD_IP="$(srun --overlap --nodes=1 --ntasks=1 -w "$HEAD_NODE" hostname --ip-address | awk '{print $1}')"
RAY_PORT=$((20000 + SLURM_JOB_ID % 10000))
RAY_HEAD="$HEAD_IP:$RAY_PORT"
RAY_TMP="/tmp/ray-hpsearch-$SLURM_JOB_ID"
CPUS="${SLURM_CPUS_PER_TASK:-{{CPUS_PER_NODE}}}"
GPUS="${SLURM_GPUS_PER_NODE:-0}"
GPUS="${GPUS##*:}"
export RAY_worker_niceness=0
export RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0
RAY_STEPS=()
DRIVER=""
STOPPING=0

# How the job ends, whichever way it ends: the driver first (SIGINT: Ray Tune saves the
# sweep's state and stops the trials, as after Ctrl-C), then Ray on every node (SIGTERM to
# an srun makes SLURM end its step, every process of it), then Ray's folders.
stop_driver() {
    [ -n "$DRIVER" ] && kill -0 "$DRIVER" 2>/dev/null || return 0
    kill -INT "$DRIVER" 2>/dev/null
    for _ in $(seq {{DRIVER_STOP_S}}); do kill -0 "$DRIVER" 2>/dev/null || return 0; sleep 1; done
    echo "hpsearch: the driver did not stop within {{DRIVER_STOP_S}} s: terminating it" >&2
    kill -TERM "$DRIVER" 2>/dev/null
    sleep 10
    kill -KILL "$DRIVER" 2>/dev/null
    return 0
}
stop_ray() {
    [ "${#RAY_STEPS[@]}" -gt 0 ] || return 0
    echo "hpsearch: stopping Ray (SLURM then reports its steps as cancelled: that is this)"
    kill -TERM "${RAY_STEPS[@]}" 2>/dev/null
    for _ in $(seq 60); do
        kill -0 "${RAY_STEPS[@]}" 2>/dev/null || break
        sleep 1
    done
    kill -KILL "${RAY_STEPS[@]}" 2>/dev/null
    wait "${RAY_STEPS[@]}" 2>/dev/null
    RAY_STEPS=()
    # Ray's folders: this node's directly, the others' through a last step (which a job being
    # cancelled may no longer start).
    rm -rf "$RAY_TMP"
    if [ "$SLURM_JOB_NUM_NODES" -gt 1 ]; then
        srun --overlap --nodes="$SLURM_JOB_NUM_NODES" --ntasks-per-node=1 rm -rf "$RAY_TMP" \
            2>/dev/null || true
    fi
    echo "hpsearch: Ray stopped on every node"
}
on_signal() {
    [ "$STOPPING" = 1 ] && return
    STOPPING=1
    echo "hpsearch: $1 received: stopping the sweep so that a later job can continue it"
    [ -n "$DRIVER" ] || exit 130  # the sweep has not started: Ray only is stopped (EXIT trap)
    stop_driver
}
trap 'on_signal SIGUSR1' USR1
trap 'on_signal SIGTERM' TERM
trap stop_ray EXIT

# Whether Ray's cluster has COUNT live nodes: one try, at most 60 s (a driver that joins and
# counts; Ray's own messages are dropped, the script says what happened).
ray_has_nodes() {
    timeout 60 python - "$RAY_HEAD" "$1" 2>/dev/null <<'EOF'
import sys

import ray

ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
sys.exit(0 if sum(node["Alive"] for node in ray.nodes()) >= int(sys.argv[2]) else 3)
EOF
}
# Waits up to {{START_WAIT_S}} s until Ray has COUNT nodes; fails at once if the head's step ended.
wait_for_nodes() {
    local deadline=$((SECONDS + {{START_WAIT_S}}))
    while [ "$SECONDS" -lt "$deadline" ]; do
        kill -0 "${RAY_STEPS[0]}" 2>/dev/null || return 1
        ray_has_nodes "$1" && return 0
        sleep 3
    done
    return 1
}

# 3. Ray's head on the first node: a job step that lasts until Ray is stopped (--block). Ray
#    gives its raylet 30 s to register, which a busy node can miss: up to 3 tries.
for attempt in 1 2 3; do
    srun --overlap --nodes=1 --ntasks=1 -w "$HEAD_NODE" \
        ray start --head --block --node-ip-address="$HEAD_IP" --port="$RAY_PORT" \
        --ray-client-server-port=$((RAY_PORT + 1)) --dashboard-agent-listen-port=$((RAY_PORT + 2)) \
        --num-cpus="$CPUS" --num-gpus="$GPUS" --temp-dir="$RAY_TMP" \
        --include-dashboard=false --disable-usage-stats &
    RAY_STEPS=($!)
    wait_for_nodes 1 && break
    echo "hpsearch: Ray's head did not start on $HEAD_NODE (try $attempt of 3)" >&2
    stop_ray
    [ "$attempt" = 3 ] && exit 1
done

# 4. A Ray worker on every other node, joining the head.
for node in "${NODES[@]:1}"; do
    srun --overlap --nodes=1 --ntasks=1 -w "$node" \
        ray start --block --address="$RAY_HEAD" \
        --num-cpus="$CPUS" --num-gpus="$GPUS" --temp-dir="$RAY_TMP" --disable-usage-stats &
    RAY_STEPS+=($!)
done

# 5. Wait until the cluster has every node of the job.
if ! wait_for_nodes "$SLURM_JOB_NUM_NODES"; then
    echo "error: Ray did not get all $SLURM_JOB_NUM_NODES nodes within {{START_WAIT_S}} s (see Ray's messages above)" >&2
    exit 1
fi
echo "hpsearch: Ray has all $SLURM_JOB_NUM_NODES node(s), head at $RAY_HEAD"

# 6. The driver joins the cluster (--address) and runs the sweep on it. It runs in the
#    background so that a signal is handled the moment it comes; `wait` then returns early,
#    the trap stops the driver, and the second `wait` collects its exit status.
{{DRIVER_COMMAND}} \
    --address "$RAY_HEAD" &
DRIVER=$!
wait "$DRIVER"
STATUS=$?
if [ "$STOPPING" = 1 ]; then
    wait "$DRIVER" 2>/dev/null
    STATUS=$?
fi

# 7. The end: Ray is shut down on every node (the EXIT trap), and the job says how to go on.
if [ "$STATUS" = 0 ]; then
    echo "hpsearch: {{DONE_MESSAGE}}"
else
    echo "hpsearch: the driver exited with status $STATUS; continue the sweep in a new job with:"
    printf '  %s\n' {{RESUME_COMMAND_QUOTED}}
fi
exit "$STATUS"
"""

_PLACEHOLDER = re.compile(r"\{\{([A-Z_]+)\}\}")


def render(values: Mapping[str, str]) -> str:
    """The template with every `{{NAME}}` replaced by values[NAME] (already bash-quoted)."""
    missing = sorted(set(_PLACEHOLDER.findall(TEMPLATE)) - set(values))
    if missing:
        raise KeyError(f"slurm template values missing: {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], TEMPLATE)


def sweep_options(settings: SweepSettings, exp_dir: Path) -> list[list[str]]:
    """`hpsearch sweep`'s options for `settings`, one entry a line: every field that differs
    from its default (paths made absolute), the experiment folder fixed by name and storage."""
    lines = [["--name", exp_dir.name], ["--storage-path", str(exp_dir.parent)]]
    skip = {"name", "storage_path", "address", "num_cpus", "exist_ok_suffix", "overrides"}
    for f in fields(SweepSettings):
        value = getattr(settings, f.name)
        if f.name in skip or value == f.default:
            continue
        if f.name == "report":
            lines.append(["--no-report"])
        elif value is True:
            lines.append([option_flag(f.name)])
        elif f.name in ("data_dir", "warm_start"):
            lines.append([option_flag(f.name), str(Path(value).expanduser().resolve())])
        else:
            lines.append([option_flag(f.name), str(value)])
    return lines


def option_flag(field_name: str) -> str:
    """The command-line option of a SweepSettings field (`max_failures` -> `--max-failures`)."""
    return "--" + field_name.replace("_", "-")


def hpsearch_command() -> list[str]:
    """This environment's hpsearch command (the script puts its bin folder first on PATH)."""
    return ["hpsearch"] if (_bin_dir() / "hpsearch").exists() else ["python", "-m", "hpsearch.cli"]


def _bin_dir() -> Path:
    return Path(sys.executable).absolute().parent  # a venv's python is a link: never resolved


def render_script(plan: JobPlan, job: SlurmJob, limit: float | None) -> str:
    """The batch script's text (`limit`: the job's time limit in seconds; None: unlimited)."""
    optional = [
        f"#SBATCH --gpus-per-node={job.gpus_per_node}\n" if job.gpus_per_node else "",
        f"#SBATCH --partition={job.partition}\n" if job.partition else "",
        f"#SBATCH --account={job.account}\n" if job.account else "",
        "#SBATCH --exclusive\n" if job.exclusive else "",
    ]
    resume = ["hpsearch", "slurm", "--resume", str(plan.exp_dir), *job.options(), "--submit"]
    done = "every trial has ended"
    if "--no-report" not in sum(plan.driver, []):
        done += "; the report is in $EXP_DIR/report"
    return render(
        {
            "TITLE": plan.title,
            "WRITTEN": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "SCRIPT": shlex.quote(str(plan.script)),
            "LOG_HINT": shlex.quote(str(plan.log).replace("%j", "JOBID")),
            "EXP_DIR": shlex.quote(str(plan.exp_dir)),
            "RESUME_COMMAND": shlex.join(resume),
            "RESUME_COMMAND_QUOTED": shlex.quote(shlex.join(resume)),
            "JOB_NAME": job.job_name or f"hpsearch-{plan.exp_dir.name}",
            "NODES": str(job.nodes),
            "CPUS_PER_NODE": str(job.cpus_per_node),
            "OPTIONAL_SBATCH": "".join(optional),
            "TIME": "UNLIMITED" if limit is None else _slurm_time(limit),
            "LOG": str(plan.log),
            "STOP_MARGIN": str(STOP_MARGIN_S),
            "BIN_DIR": shlex.quote(str(_bin_dir())),
            "WORKDIR": shlex.quote(str(Path.cwd())),
            "DRIVER_STOP_S": str(DRIVER_STOP_S),
            "START_WAIT_S": str(START_WAIT_S),
            "DRIVER_COMMAND": " \\\n    ".join(shlex.join(line) for line in plan.driver),
            "DONE_MESSAGE": done,
        }
    )


def _slurm_time(seconds: float) -> str:
    s = math.ceil(seconds)
    days, rest = divmod(s, 86400)
    clock = f"{rest // 3600:02d}:{rest % 3600 // 60:02d}:{rest % 60:02d}"
    return f"{days}-{clock}" if days else clock


def write_script(plan: JobPlan, job: SlurmJob, limit: float | None) -> Path:
    """Write the script (executable); refuses to replace one with other content, which may
    hold edits by hand (the same script written again is fine)."""
    text = render_script(plan, job, limit)
    path = plan.script
    if path.exists():
        if not path.is_file():
            raise ConfigError(f"--script {path} is not a file: pass another --script")
        old = _WRITTEN_LINE.sub("", path.read_text(errors="replace"))
        if old != _WRITTEN_LINE.sub("", text):
            raise ConfigError(
                f"{path} exists with other content (edited by hand?): submit it with "
                "`sbatch`, remove it, or pass --script PATH"
            )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
        path.chmod(0o755)
    except OSError as exc:
        raise ConfigError(f"cannot write {path} ({exc.strerror}): pass --script PATH") from None
    return path
