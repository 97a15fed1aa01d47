#!/usr/bin/env bash
# A private one-node SLURM cluster on this machine, for the SLURM tests (`make test-slurm`).
#
#   tests/slurm/slurm_cluster.sh install   apt-get install slurm-wlm and munge (Debian; as root)
#   tests/slurm/slurm_cluster.sh start     munge key, slurm.conf for this host, munged,
#                                          slurmctld, slurmd; waits until the node is idle
#   tests/slurm/slurm_cluster.sh stop      cancels the cluster's jobs, stops what `start` started
#   tests/slurm/slurm_cluster.sh status    what runs
#
# Everything but the munge key lives in $HPSEARCH_SLURM_DIR (default /tmp/hpsearch-slurm):
# slurm.conf, state, spool, logs and the ids of the daemons this script started. Clients find
# the cluster through SLURM_CONF=$HPSEARCH_SLURM_DIR/slurm.conf (`start` prints it), so an
# existing /etc/slurm/slurm.conf is never touched. A munged that already runs is used and left
# running; `stop` ends only the daemons `start` started, by their process ids.
# Needs root (SlurmUser=root, as a CI container has it). Facts: /work/shared/INTEGRATION.md.
set -euo pipefail

DIR="${HPSEARCH_SLURM_DIR:-/tmp/hpsearch-slurm}"
CONF="$DIR/slurm.conf"
MUNGE_KEY=/etc/munge/munge.key
MUNGE_SOCKET=/run/munge/munge.socket.2
# Only a munged this script started writes this file (in munge's own folder: munge cannot
# reach a private $HPSEARCH_SLURM_DIR).
MUNGE_PID=/run/munge/hpsearch-test-munged.pid
export SLURM_CONF="$CONF"

die() { echo "error: slurm_cluster.sh: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "$1 needs root (SlurmUser=root); run it as root"; }
installed() { command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    && command -v sbatch >/dev/null && command -v munged >/dev/null; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

cmd_install() {
    if installed; then echo "slurm and munge are installed"; return; fi
    need_root install
    command -v apt-get >/dev/null || die "no apt-get: install slurm-wlm and munge by hand"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
    installed || die "apt-get ran but slurmctld, slurmd, sbatch or munged is still missing"
    echo "installed: $(slurmctld -V), $(munged --version 2>&1 | awk '{print $1}')"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
        echo "munged: already running, used as it is"
        return
    fi
    if [ ! -s "$MUNGE_KEY" ]; then  # a random key of 1 KiB, readable by munge only
        install -d -o munge -g munge -m 700 /etc/munge
        (umask 077; head -c 1024 /dev/urandom >"$MUNGE_KEY")
        chown munge:munge "$MUNGE_KEY"
        chmod 400 "$MUNGE_KEY"
    fi
    install -d -o munge -g munge -m 755 /run/munge
    install -d -o munge -g munge -m 700 /var/lib/munge /var/log/munge
    runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID"
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
        sleep 0.2
    done
    die "munged did not answer on $MUNGE_SOCKET"
}

write_conf() {
    local host node
    host="$(hostname -s)"
    # What slurmd finds on this machine (CPUs, sockets, cores, threads, RealMemory), so the
    # node never drains for promising more than it has.
    node="$(slurmd -C | head -n 1)"
    case "$node" in "NodeName=$host "*) ;; *) die "unexpected \`slurmd -C\`: $node" ;; esac
    cat >"$CONF" <<EOF
# One-node test cluster written by tests/slurm/slurm_cluster.sh; removed by its \`stop\`.
ClusterName=hpsearch-test
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
KillWait=30
MinJobAge=300
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

cmd_start() {
    need_root start
    installed || die "slurm is not installed: run \`$0 install\` first"
    if alive "$DIR/slurmctld.pid" || alive "$DIR/slurmd.pid"; then
        die "a cluster of this script already runs in $DIR: \`$0 stop\` it first"
    fi
    mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log"
    start_munge
    write_conf
    /usr/sbin/slurmctld -f "$CONF"
    /usr/sbin/slurmd -f "$CONF"
    local host state
    host="$(hostname -s)"
    for _ in $(seq 120); do  # `unk*` for a few seconds, then idle
        state="$(sinfo -h -n "$host" -o %T 2>/dev/null || true)"
        case "$state" in
            idle) echo "SLURM_CONF=$CONF"; return ;;
            down* | drain*) scontrol update nodename="$host" state=resume 2>/dev/null || true ;;
        esac
        sleep 0.5
    done
    die "node $host never became idle (state: ${state:-none}); see $DIR/log/"
}

stop_pid() {  # stop_pid NAME PIDFILE: SIGTERM, then SIGKILL after 10 s
    local name="$1" file="$2" pid
    alive "$file" || { rm -f "$file"; return 0; }
    pid="$(cat "$file")"
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null || true
    rm -f "$file"
    echo "stopped $name ($pid)"
}

cmd_stop() {
    if alive "$DIR/slurmctld.pid"; then
        # Jobs first: their slurmstepd processes would outlive slurmd.
        scancel --quiet --user "$(id -un)" 2>/dev/null || true
        for _ in $(seq 120); do
            [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
    stop_pid slurmd "$DIR/slurmd.pid"
    stop_pid slurmctld "$DIR/slurmctld.pid"
    stop_pid munged "$MUNGE_PID"
    rm -f "$CONF"
}

cmd_status() {
    for file in "$MUNGE_PID" "$DIR/slurmctld.pid" "$DIR/slurmd.pid"; do
        name="$(basename "$file" .pid)"
        if alive "$file"; then echo "$name: running ($(cat "$file"))"
        else echo "$name: not started by this script"; fi
    done
    [ -f "$CONF" ] && { echo "SLURM_CONF=$CONF"; sinfo 2>/dev/null || true; }
    return 0
}

case "${1:-}" in
    install | start | stop | status) "cmd_$1" ;;
    *) echo "usage: $0 install|start|stop|status" >&2; exit 2 ;;
esac
