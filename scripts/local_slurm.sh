#!/usr/bin/env bash
# Single-node Slurm "cluster" on this machine, for tests and CI (Debian/Ubuntu, run as root,
# no systemd needed). Everything it starts is a plain daemon; state and logs live in one folder.
#
#   scripts/local_slurm.sh install   apt-get install the packages (fast no-op when present)
#   scripts/local_slurm.sh start     write the config, start the daemons, wait for an idle node
#   scripts/local_slurm.sh stop      stop every daemon this script started
#   scripts/local_slurm.sh status    print daemons and `sinfo`; exit 0 only when the node is usable
#   scripts/local_slurm.sh logs      print the tail of every daemon log
#
# Environment:
#   LLM_ENERGY_SLURM_DIR         state, logs, pid files         (default /var/lib/llm-energy-slurm)
#   LLM_ENERGY_SLURM_ACCOUNTING  1: MariaDB + slurmdbd, so `sacct` works (default)
#                                0: no accounting database; then `sacct` fails and clients must
#                                   poll with squeue (snakemake: --slurm-status-command squeue)
#   LLM_ENERGY_SLURM_TIMEOUT     seconds `start` waits for an idle node     (default 90)
#   LLM_ENERGY_SLURM_DB_PORT     TCP port of the private MariaDB on 127.0.0.1 (default 3307)
#
# The cluster is named "llmenergy", has one partition "debug" (the default) holding this host
# (its `hostname -s`), with the CPUs and memory `slurmd -C` reports, no GPUs/GRES.
# /etc/slurm/slurm.conf is the one file written outside the state folder (Slurm's clients read
# it there); it is only overwritten when it is missing or was written by this script.
set -euo pipefail

STATE=${LLM_ENERGY_SLURM_DIR:-/var/lib/llm-energy-slurm}
ACCOUNTING=${LLM_ENERGY_SLURM_ACCOUNTING:-1}
TIMEOUT=${LLM_ENERGY_SLURM_TIMEOUT:-90}
DB_PORT=${LLM_ENERGY_SLURM_DB_PORT:-3307}
CLUSTER=llmenergy
PARTITION=debug
SLURM_CONF=/etc/slurm/slurm.conf
MARKER="# written by llm-energy scripts/local_slurm.sh"
RUN=$STATE/run
LOG=$STATE/log
DB_PASS=llm-energy-local   # only reachable from 127.0.0.1; a throwaway test database

PKGS=(slurmctld slurmd slurm-client munge)
DB_PKGS=(slurmdbd mariadb-server mariadb-client)

say() { echo "local_slurm: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }
need_root() { [[ $(id -u) -eq 0 ]] || die "must run as root (it starts system daemons)"; }

# is process $1 alive (not a zombie), and named $2 if given (guards against reused pids)
proc_alive() { # pid [comm]
    local st
    [[ $1 =~ ^[0-9]+$ ]] && [[ -r /proc/$1/stat ]] || return 1
    st=$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $st && $st != Z && $st != X ]] || return 1
    [[ -z ${2:-} ]] || [[ $(cat "/proc/$1/comm" 2>/dev/null) == "$2" ]]
}

# the pid file names a live process whose name is the file's base name (slurmd.pid -> slurmd)
pid_alive() { # pidfile
    [[ -s $1 ]] || return 1
    proc_alive "$(<"$1")" "$(basename "$1" .pid)"
}

accounting_on() { [[ $ACCOUNTING == 1 ]]; }

# ---------------------------------------------------------------------------------------------
cmd_install() {
    local want=("${PKGS[@]}") missing=() p
    accounting_on && want+=("${DB_PKGS[@]}")
    local ok
    ok=$(dpkg-query -W -f='${Package} ${Status}\n' "${want[@]}" 2>/dev/null | awk '/ install ok installed$/ {print $1}' || true)
    for p in "${want[@]}"; do
        grep -qx "$p" <<<"$ok" || missing+=("$p")
    done
    if ((${#missing[@]} == 0)); then
        say "packages already installed"
        return 0
    fi
    need_root
    say "installing: ${missing[*]}"
    # No init system here: keep apt's maintainer scripts from trying to start services.
    local policy=/usr/sbin/policy-rc.d added_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod 755 "$policy"; added_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    local opts=(-y -q --no-install-recommends -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    if ! apt-get install "${opts[@]}" "${missing[@]}"; then
        say "install failed; running apt-get update and retrying"
        apt-get update -q
        apt-get install "${opts[@]}" "${missing[@]}"
    fi
    ((added_policy)) && rm -f "$policy"
    say "packages installed"
}

# ---------------------------------------------------------------------------------------------
node_name() { hostname -s; }

node_state() { # prints e.g. idle, mix, alloc, down*, drain, unk*; empty if the controller is down
    sinfo -h -N -n "$(node_name)" -o '%t' 2>/dev/null | head -1 || true
}

node_usable() {
    case "$(node_state)" in idle | mix | alloc | comp) return 0 ;; *) return 1 ;; esac
}

daemons_alive() {
    pid_alive "$RUN/slurmctld.pid" && pid_alive "$RUN/slurmd.pid" || return 1
    if accounting_on; then
        pid_alive "$RUN/slurmdbd.pid" && pid_alive "$RUN/mariadbd.pid" || return 1
    fi
    munge_ok
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

ensure_hosts() {
    local n; n=$(node_name)
    if ! getent hosts "$n" >/dev/null; then
        say "adding $n to /etc/hosts"
        echo "127.0.1.1 $n" >>/etc/hosts
    fi
}

start_munge() {
    if munge_ok; then return 0; fi
    install -d -o munge -g munge -m 0700 /etc/munge
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    if [[ ! -s /etc/munge/munge.key ]]; then
        say "creating /etc/munge/munge.key"
        if command -v mungekey >/dev/null; then
            runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
    fi
    chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
    # a stale socket/pid from a killed munged makes the new one refuse to start
    if [[ -e /run/munge/munged.pid ]] && ! pid_alive /run/munge/munged.pid; then
        rm -f /run/munge/munged.pid /run/munge/munge.socket.2 /run/munge/munge.socket.2.lock
    fi
    runuser -u munge -- /usr/sbin/munged --force >>"$LOG/munged.out" 2>&1 \
        || die "munged failed to start: $(tail -5 "$LOG/munged.out" /var/log/munge/munged.log 2>/dev/null)"
    touch "$RUN/munged.ours"   # `stop` only stops a munged that this script started
    for _ in $(seq 50); do munge_ok && return 0; sleep 0.1; done
    die "munged does not answer; see /var/log/munge/munged.log"
}

write_slurm_conf() { # prints "changed" if the file changed
    local n hw mem acct tmp
    n=$(node_name)
    hw=$(slurmd -C | head -1) || die "slurmd -C failed"
    # NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=24105
    hw=${hw#NodeName=* }
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
    [[ $mem =~ ^[0-9]+$ ]] || die "cannot read RealMemory from slurmd -C: $hw"
    # Leave 5 % head room: a node whose memory reads lower than configured gets drained.
    hw=${hw/RealMemory=$mem/RealMemory=$((mem * 95 / 100))}
    if accounting_on; then
        acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
    else
        acct="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
    fi
    tmp=$(mktemp)
    cat >"$tmp" <<EOF
$MARKER
# state and logs: $STATE
ClusterName=$CLUSTER
SlurmctldHost=$n(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# no cgroups in containers / without systemd
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
ReturnToService=2
# finished jobs stay visible to squeue for 5 minutes (squeue-based status polling needs this)
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
$acct
JobCompType=jobcomp/none
NodeName=$n NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=$PARTITION Nodes=$n Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    if [[ -f $SLURM_CONF ]] && ! grep -qF "$MARKER" "$SLURM_CONF"; then
        rm -f "$tmp"
        die "$SLURM_CONF exists and was not written by this script; not overwriting it"
    fi
    if [[ -f $SLURM_CONF ]] && cmp -s "$tmp" "$SLURM_CONF"; then
        rm -f "$tmp"; return 0
    fi
    install -d -m 0755 /etc/slurm
    install -m 0644 "$tmp" "$SLURM_CONF"
    rm -f "$tmp"
    echo changed
}

db_sock() { echo "$RUN/mariadb.sock"; }

start_mariadb() {
    pid_alive "$RUN/mariadbd.pid" && return 0
    install -d -o mysql -g mysql -m 0750 "$STATE/mysql"
    if [[ ! -d $STATE/mysql/mysql ]]; then
        say "initialising MariaDB data directory"
        mariadb-install-db --no-defaults --user=mysql --datadir="$STATE/mysql" \
            --auth-root-authentication-method=socket --skip-test-db >"$LOG/mariadb-install.log" 2>&1 \
            || die "mariadb-install-db failed: $(tail -20 "$LOG/mariadb-install.log")"
    fi
    chown mysql:mysql "$RUN"   # socket and pid file live there
    setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$STATE/mysql" \
        --socket="$(db_sock)" --pid-file="$RUN/mariadbd.pid" --port="$DB_PORT" \
        --bind-address=127.0.0.1 --skip-name-resolve  \
        --innodb-buffer-pool-size=256M --innodb-log-file-size=64M --innodb-lock-wait-timeout=900 \
        </dev/null >>"$LOG/mariadb.out" 2>&1 &
    for _ in $(seq 300); do
        mariadb-admin --no-defaults --socket="$(db_sock)" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    mariadb-admin --no-defaults --socket="$(db_sock)" ping >/dev/null 2>&1 \
        || die "MariaDB did not come up: $(tail -20 "$LOG/mariadb.out" 2>/dev/null)"
    mariadb --no-defaults --socket="$(db_sock)" -u root <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF
}

start_slurmdbd() {
    pid_alive "$RUN/slurmdbd.pid" && return 0
    (umask 077; cat >/etc/slurm/slurmdbd.conf) <<EOF
$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
    chmod 0600 /etc/slurm/slurmdbd.conf
    /usr/sbin/slurmdbd >>"$LOG/slurmdbd.out" 2>&1 || die "slurmdbd failed to start: $(tail -20 "$LOG/slurmdbd.log" 2>/dev/null)"
    for _ in $(seq 150); do
        sacctmgr -n list cluster format=cluster >/dev/null 2>&1 && break
        sleep 0.1
    done
    sacctmgr -n list cluster format=cluster >/dev/null 2>&1 \
        || die "slurmdbd does not answer: $(tail -20 "$LOG/slurmdbd.log" 2>/dev/null)"
    # register the cluster before slurmctld connects (idempotent)
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null
    fi
}

dump_logs() {
    local f
    for f in "$LOG"/*.log "$LOG"/*.out /var/log/munge/munged.log; do
        [[ -s $f ]] || continue
        echo "===== $f (last 40 lines) =====" >&2
        tail -40 "$f" >&2
    done
    echo "===== sinfo =====" >&2
    sinfo -N -l >&2 2>&1 || true
    scontrol show node "$(node_name)" >&2 2>&1 || true
}

cmd_start() {
    if daemons_alive && node_usable && [[ -f $SLURM_CONF ]]; then
        say "already running ($(node_name): $(node_state))"
        return 0
    fi
    need_root
    command -v slurmctld >/dev/null || die "Slurm is not installed; run: $0 install"
    if accounting_on && ! { command -v slurmdbd && command -v mariadbd; } >/dev/null; then
        die "slurmdbd/MariaDB not installed; run: $0 install (or set LLM_ENERGY_SLURM_ACCOUNTING=0)"
    fi
    local t0=$SECONDS
    install -d -m 0755 "$STATE" "$RUN" "$LOG" "$STATE/ctld" "$STATE/slurmd"
    ensure_hosts
    start_munge
    local changed
    changed=$(write_slurm_conf) || exit 1
    if [[ $changed == changed ]] && { pid_alive "$RUN/slurmctld.pid" || pid_alive "$RUN/slurmd.pid"; }; then
        say "configuration changed; restarting slurmctld/slurmd"
        stop_pidfile slurmd; stop_pidfile slurmctld
    fi
    if accounting_on; then
        start_mariadb
        start_slurmdbd
    fi
    if ! pid_alive "$RUN/slurmctld.pid"; then
        /usr/sbin/slurmctld >>"$LOG/slurmctld.out" 2>&1 || { dump_logs; die "slurmctld failed to start"; }
    fi
    if ! pid_alive "$RUN/slurmd.pid"; then
        /usr/sbin/slurmd >>"$LOG/slurmd.out" 2>&1 || { dump_logs; die "slurmd failed to start"; }
    fi
    local st resumed=0
    while ((SECONDS - t0 < TIMEOUT)); do
        st=$(node_state)
        case "$st" in
        idle | mix | alloc | comp)
            say "up in $((SECONDS - t0)) s: node $(node_name) is $st, partition $PARTITION (default)$(accounting_on && echo ', sacct available')"
            return 0 ;;
        drain* | down* | fail*)
            # left over from an earlier run; ReturnToService=2 covers most cases
            if ((resumed == 0 && SECONDS - t0 > 3)); then
                scontrol update nodename="$(node_name)" state=resume >/dev/null 2>&1 || true
                resumed=1
            fi ;;
        esac
        sleep 0.5
    done
    dump_logs
    die "node $(node_name) not idle after ${TIMEOUT}s (state: '${st:-controller not answering}')"
}

# ---------------------------------------------------------------------------------------------
stop_pidfile() { # name [pidfile]
    local name=$1 pf=${2:-$RUN/$1.pid} p
    pid_alive "$pf" || { rm -f "$pf"; return 0; }
    p=$(<"$pf")
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 100); do proc_alive "$p" || break; sleep 0.1; done
    if proc_alive "$p"; then
        say "$name (pid $p) ignored SIGTERM for 10 s; killing it"
        kill -KILL "$p" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$pf"
    say "stopped $name"
}

cmd_stop() {
    need_root
    # cancel whatever is still queued/running so that no job steps outlive the daemons
    if pid_alive "$RUN/slurmctld.pid"; then
        local jobs
        jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ' || true)
        if [[ -n ${jobs// /} ]]; then
            say "cancelling jobs: $jobs"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 50); do
                [[ -z $(squeue -h -t R,CG,PD -o %A 2>/dev/null) ]] && break
                sleep 0.2
            done
        fi
    fi
    stop_pidfile slurmd
    stop_pidfile slurmctld
    stop_pidfile slurmdbd
    if pid_alive "$RUN/mariadbd.pid"; then stop_pidfile mariadbd; fi
    if [[ -f $RUN/munged.ours ]]; then
        stop_pidfile munged /run/munge/munged.pid
        rm -f "$RUN/munged.ours"
    fi
    say "all stopped"
}

cmd_status() {
    local d pf rc=0
    for d in munged mariadbd slurmdbd slurmctld slurmd; do
        pf=$RUN/$d.pid; [[ $d == munged ]] && pf=/run/munge/munged.pid
        if pid_alive "$pf"; then printf '%-10s running (pid %s)\n' "$d" "$(<"$pf")"
        else printf '%-10s not running\n' "$d"; fi
    done
    echo "state dir: $STATE   accounting: $(accounting_on && echo slurmdbd || echo none)"
    if sinfo 2>/dev/null; then :; else echo "sinfo: controller not answering"; fi
    node_usable || rc=1
    daemons_alive || rc=1
    return $rc
}

cmd_logs() { dump_logs; }

case "${1:-}" in
install) cmd_install ;;
start) cmd_start ;;
stop) cmd_stop ;;
restart) cmd_stop; cmd_start ;;
status) cmd_status ;;
logs) cmd_logs ;;
*) echo "usage: $0 {install|start|stop|restart|status|logs}" >&2; exit 2 ;;
esac
