#!/usr/bin/env bash
# A real, throw-away SLURM cluster on this machine, for tests and CI.
#
#   tests/slurm/local_cluster.sh start [--nodes 1|2]   install (apt) if needed, configure, start
#   tests/slurm/local_cluster.sh status                daemons, sinfo, squeue
#   tests/slurm/local_cluster.sh stop                  cancel jobs, stop what `start` started
#
# Needs root (it runs munged, slurmctld and slurmd, and may apt-get install Debian's
# slurmctld slurmd slurm-client munge). Everything it writes lives in the state dir
# ($SLURM_TEST_DIR, default /tmp/cartoon-slurm) except:
#   /etc/slurm/slurm.conf  a symlink to <state>/slurm.conf (only when absent or ours),
#                          so every client (sbatch, srun, squeue, ...) finds the cluster;
#   /etc/hosts             "127.0.0.1 node1 node2  # cartoon-slurm", so node names resolve;
#   /etc/munge/munge.key   created when missing.
# `stop` undoes the first two and stops only the processes whose PIDs `start` recorded.
#
# The cluster: partition "debug" (default) with node1 [node2], no GPUs, and partition "gpu" with
# gpu1, whose 2 GPUs are fake (gres files with no device: scheduled and counted, never used);
# each node a slurmd on 127.0.0.1 with its own port, CPUs/RealMemory from `slurmd -C`. No systemd/cgroups
# needed: proctrack/linuxproc, task/none. No accounting database: job states outlive
# squeue (MinJobAge=5 s) in the jobcomp/filetxt file <state>/jobcomp.txt.
set -euo pipefail

STATE_DIR=${SLURM_TEST_DIR:-/tmp/cartoon-slurm}
CONF="$STATE_DIR/slurm.conf"
ETC_CONF=/etc/slurm/slurm.conf
HOSTS_TAG="# cartoon-slurm"
CTLD_PORT=${SLURM_TEST_CTLD_PORT:-6817}
NODE_PORT0=${SLURM_TEST_NODE_PORT:-6818}     # node k listens on NODE_PORT0 + k - 1
PACKAGES=(slurmctld slurmd slurm-client munge)

log() { echo "[local_cluster] $*" >&2; }
die() { log "error: $*"; exit 1; }

# a live process (a zombie, exited but not yet reaped, counts as gone)
alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null; }
pid_of() { [[ -s "$1" ]] && cat "$1" || true; }

ensure_installed() {
    local missing=0 c
    for c in slurmctld slurmd sbatch munged; do command -v "$c" >/dev/null || missing=1; done
    (( missing )) || return 0
    log "installing ${PACKAGES[*]} (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${PACKAGES[@]}" >/dev/null \
        || { DEBIAN_FRONTEND=noninteractive apt-get update >/dev/null &&
             DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${PACKAGES[@]}" >/dev/null; } \
        || die "apt-get install ${PACKAGES[*]} failed"
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
    install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
    install -d -o munge -g munge -m 0755 /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        log "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null; then
            runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    if munge_ok; then
        log "munged already running (not ours; left alone at stop)"
        return 0
    fi
    install -d -o munge -g munge -m 0755 "$STATE_DIR/munge"
    runuser -u munge -- munged --pid-file="$STATE_DIR/munge/munged.pid"
    local i
    for i in $(seq 50); do munge_ok && return 0; sleep 0.1; done
    die "munged did not come up (see /var/log/munge/munged.log)"
}

# node1 [node2] in partition debug (CPU only), and gpu1 in partition gpu: 2 fake GPUs (gres with
# no device behind it: SLURM schedules and counts them; torch sees no CUDA, so jobs train on CPU)
node_names() { local k; for ((k = 1; k <= $1; k++)); do echo "node$k"; done; echo gpu1; }
GPU_NODE_PORT_OFFSET=2

write_conf() {
    local nodes=$1 cpus mem k
    read -r cpus mem < <(slurmd -C | sed -n 's/.*CPUs=\([0-9]*\).*RealMemory=\([0-9]*\).*/\1 \2/p')
    [[ -n "$cpus" && -n "$mem" ]] || die "cannot read CPUs/RealMemory from 'slurmd -C'"
    cat >"$CONF" <<EOF
# Written by tests/slurm/local_cluster.sh: a $nodes-node test cluster on 127.0.0.1.
ClusterName=cartoon
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job may start again after cred_expire seconds (default 120)
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1,sched_min_interval=100000
ReturnToService=2
JobRequeue=1
# a child of a failed afterok parent is cancelled instead of pending forever
DependencyParameters=kill_invalid_depend
MinJobAge=5
KillWait=5
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=60
MessageTimeout=10
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE_DIR/jobcomp.txt
StateSaveLocation=$STATE_DIR/state
SlurmdSpoolDir=$STATE_DIR/spool/%n
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd-%n.pid
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
EOF
    local names=()
    for ((k = 1; k <= nodes; k++)); do
        echo "NodeName=node$k NodeAddr=127.0.0.1 NodeHostname=node$k Port=$((NODE_PORT0 + k - 1)) CPUs=$cpus RealMemory=$mem State=UNKNOWN" >>"$CONF"
        names+=("node$k")
    done
    echo "NodeName=gpu1 NodeAddr=127.0.0.1 NodeHostname=gpu1 Port=$((NODE_PORT0 + GPU_NODE_PORT_OFFSET)) CPUs=$cpus RealMemory=$mem Gres=gpu:2 State=UNKNOWN" >>"$CONF"
    echo "PartitionName=debug Nodes=$(IFS=,; echo "${names[*]}") Default=YES MaxTime=INFINITE State=UP" >>"$CONF"
    echo "PartitionName=gpu Nodes=gpu1 MaxTime=INFINITE State=UP" >>"$CONF"
    touch "$STATE_DIR/fakegpu0" "$STATE_DIR/fakegpu1"
    echo "NodeName=gpu1 Name=gpu File=$STATE_DIR/fakegpu[0-1]" >"$STATE_DIR/gres.conf"
}

link_conf() {
    mkdir -p /etc/slurm
    if [[ -L "$ETC_CONF" || ! -e "$ETC_CONF" ]]; then
        ln -sfn "$CONF" "$ETC_CONF"
        echo "$ETC_CONF" >"$STATE_DIR/linked-conf"
    else
        log "$ETC_CONF is a real file, left alone: run clients with SLURM_CONF=$CONF"
    fi
}

add_hosts() {
    local names
    names=$(node_names "$1" | tr '\n' ' ')
    remove_hosts
    echo "127.0.0.1 ${names}${HOSTS_TAG}" >>/etc/hosts
}

remove_hosts() {
    # in place (not sed -i): /etc/hosts may be a bind mount that cannot be replaced
    if grep -q "$HOSTS_TAG" /etc/hosts 2>/dev/null; then
        local kept
        kept=$(grep -v "$HOSTS_TAG" /etc/hosts)
        printf '%s\n' "$kept" >/etc/hosts
    fi
}

wait_idle() {
    local want=$1 i n
    for i in $(seq 150); do
        n=$(SLURM_CONF=$CONF sinfo -h -N -o '%N %t' 2>/dev/null | awk '$2 == "idle"' | sort -u | wc -l)
        (( n >= want )) && return 0
        sleep 0.2
    done
    SLURM_CONF=$CONF sinfo -N -l >&2 || true
    die "nodes not idle after 30 s (logs: $STATE_DIR/*.log)"
}

cmd_start() {
    local nodes=1
    while (($#)); do
        case $1 in
            --nodes) nodes=${2:?}; shift 2 ;;
            --nodes=*) nodes=${1#*=}; shift ;;
            *) die "unknown argument: $1" ;;
        esac
    done
    [[ $nodes =~ ^[12]$ ]] || die "--nodes must be 1 or 2"
    (( EUID == 0 )) || die "must run as root (it starts munged, slurmctld and slurmd)"
    if alive "$(pid_of "$STATE_DIR/slurmctld.pid")"; then
        local have
        have=$(cat "$STATE_DIR/nodes" 2>/dev/null || echo 0)
        [[ $have == "$nodes" ]] || die "a $have-node cluster is running; run '$0 stop' first"
        log "already running ($nodes node(s)), state in $STATE_DIR"
        return 0
    fi
    ensure_installed
    # a fresh cluster each time: job ids restart at 1, so old job records must go too
    rm -rf "$STATE_DIR/state" "$STATE_DIR/spool" "$STATE_DIR"/*.log "$STATE_DIR/jobcomp.txt"
    mkdir -p "$STATE_DIR/state" "$STATE_DIR/spool"
    chmod 0755 "$STATE_DIR"
    echo "$nodes" >"$STATE_DIR/nodes"
    start_munge
    write_conf "$nodes"
    link_conf
    add_hosts "$nodes"
    slurmctld -f "$CONF" -c -i
    local name
    for name in $(node_names "$nodes"); do
        mkdir -p "$STATE_DIR/spool/$name"
        slurmd -f "$CONF" -N "$name"
    done
    wait_idle "$((nodes + 1))"
    log "up: $nodes node(s) in partition debug + gpu1 (2 fake GPUs) in partition gpu; state, logs and jobcomp.txt in $STATE_DIR"
    [[ -f "$STATE_DIR/linked-conf" ]] || log "export SLURM_CONF=$CONF"
}

stop_pid() {  # stop_pid <pidfile> <label>
    local pid i
    pid=$(pid_of "$1")
    alive "$pid" || { rm -f "$1"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 100); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then log "$2 ($pid) ignored SIGTERM; SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    rm -f "$1"
}

cmd_stop() {
    local jobs f i
    if alive "$(pid_of "$STATE_DIR/slurmctld.pid")"; then
        # without cgroups, job processes would outlive slurmd: cancel the jobs first
        jobs=$(SLURM_CONF=$CONF squeue -h -o %A 2>/dev/null || true)
        if [[ -n "$jobs" ]]; then
            log "cancelling jobs: $(echo $jobs)"
            SLURM_CONF=$CONF scancel $jobs 2>/dev/null || true
            for i in $(seq 75); do
                [[ -z "$(SLURM_CONF=$CONF squeue -h -t R,CG,CF,PD -o %A 2>/dev/null)" ]] && break
                sleep 0.2
            done
        fi
    fi
    for f in "$STATE_DIR"/slurmd-*.pid; do [[ -e $f ]] && stop_pid "$f" slurmd; done
    stop_pid "$STATE_DIR/slurmctld.pid" slurmctld
    stop_pid "$STATE_DIR/munge/munged.pid" munged
    if [[ -f "$STATE_DIR/linked-conf" ]]; then
        [[ "$(readlink "$ETC_CONF" 2>/dev/null)" == "$CONF" ]] && rm -f "$ETC_CONF"
        rm -f "$STATE_DIR/linked-conf"
    fi
    remove_hosts
    rm -f "$STATE_DIR/nodes"
    log "stopped (logs kept in $STATE_DIR)"
}

cmd_status() {
    local f rc=0
    for f in "$STATE_DIR/munge/munged.pid" "$STATE_DIR/slurmctld.pid" "$STATE_DIR"/slurmd-*.pid; do
        [[ -e $f ]] || continue
        if alive "$(pid_of "$f")"; then echo "$(basename "$f" .pid): running (pid $(pid_of "$f"))"
        else echo "$(basename "$f" .pid): dead"; rc=1; fi
    done
    alive "$(pid_of "$STATE_DIR/slurmctld.pid")" || { echo "cluster: not running"; return 1; }
    SLURM_CONF=$CONF sinfo -N -o '%N %t %c %m %P' || rc=1
    SLURM_CONF=$CONF squeue || rc=1
    return $rc
}

case ${1:-} in
    start) shift; cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start [--nodes 1|2] | stop | status" >&2; exit 2 ;;
esac
