#!/bin/bash
# make slurm-test: tests/slurm/study.sbatch (the README's script) on a real
# Slurm: munged, MariaDB, slurmdbd, slurmctld and slurmd for one node on
# localhost, started as root with their state and logs on a tmpfs, in
# network, host-name, pid and mount namespaces of their own (loopback only).
# A job array of 3 over the tiny trio and tests/data/eval/: one task is
# requeued while it runs (it resumes), the merge runs as a dependent job,
# and the merged folder must equal an unsharded run byte for byte. Prints the sacct records
# and the checksums. Every daemon is stopped by its pid on the way out, also
# on failure, and the folder removed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
if [ "$(id -u)" != 0 ]; then
    echo "slurm-test: needs root (it installs packages and starts daemons)"
    exit 1
fi

# 1. packages: Debian's Slurm, MUNGE, and the accounting database behind sacct
need=""
for p in slurm-wlm munge slurmdbd mariadb-server iproute2; do
    dpkg -s "$p" > /dev/null 2>&1 || need="$need $p"
done
if [ -n "$need" ]; then
    echo "slurm-test: installing$need"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $need > /dev/null
fi

# 2. namespaces of our own: the network (the daemons see only loopback), the
#    host name (localhost) and the pids (nothing started here outlives the test)
NS="unshare --net --uts --pid --mount --fork --mount-proc"
if [ -z "${NLA_SLURM_NS:-}" ]; then
    $NS true || { echo "slurm-test: cannot make namespaces ($NS)"; exit 1; }
    exec env NLA_SLURM_NS=1 $NS "$ROOT/tests/slurm/run.sh"
fi
ip link set lo up
# Slurm resolves names with AI_ADDRCONFIG, which wants an IPv4 address
# besides 127.0.0.1: one from TEST-NET-1 on the loopback device
ip addr add 192.0.2.1/32 dev lo
hostname localhost

# the state on a tmpfs private to this mount namespace (the database's
# fsyncs cost nothing there), gone with it
T=$(mktemp -d /tmp/nla-slurm.XXXXXX)
mount -t tmpfs -o mode=755 nla-slurm "$T"
export SLURM_CONF=$T/slurm.conf
DAEMONS="slurmd slurmctld slurmdbd mariadbd munged"
ok=0
why="" # the reason of a failure, printed again after the logs

stop() { # stop PIDFILE: TERM, then KILL after 10 s
    [ -f "$1" ] || return 0
    local pid
    pid=$(cat "$1")
    kill "$pid" 2> /dev/null || return 0
    for _ in $(seq 100); do kill -0 "$pid" 2> /dev/null || return 0; sleep 0.1; done
    kill -9 "$pid" 2> /dev/null || true
}
logs() {
    for f in "$T"/log/*.log "$T"/work/slurm-*.out; do
        if [ -f "$f" ]; then echo "== $f"; tail -n 40 "$f"; fi
    done
}
cleanup() {
    trap - EXIT INT TERM
    set +e
    cd /
    if [ -f "$T/run/slurmctld.pid" ]; then # no job outlives the daemons
        scancel --user=root 2> /dev/null || true
        for _ in $(seq 50); do [ -z "$(squeue -h 2> /dev/null)" ] && break; sleep 0.2; done
    fi
    [ $ok = 1 ] || logs
    for d in $DAEMONS; do stop "$T/run/$d.pid"; done
    umount "$T" && rmdir "$T"
    [ $ok = 1 ] && echo "slurm-test: passed" || echo "slurm-test: FAILED${why:+: $why}"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() { why="$*"; echo "slurm-test: $*"; exit 1; }
# until SECONDS CMD...: retries CMD every 0.2 s; fails after SECONDS
until_ok() {
    local end=$((SECONDS + $1))
    shift
    until "$@" > /dev/null 2>&1; do [ $SECONDS -lt $end ] || return 1; sleep 0.2; done
}

# 3. the configuration: one node, this machine's CPUs (and 1 GB for jobs), a
#    debug partition
mkdir -p "$T/run" "$T/log" "$T/ctld" "$T/slurmd" "$T/db" "$T/work"
mkdir -m 700 "$T/key"
install -m 400 /etc/munge/munge.key "$T/key/munge.key"
SOCK=$T/run/munge.socket
cat > "$SLURM_CONF" <<EOF
ClusterName=nla
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$SOCK
CredType=cred/munge
StateSaveLocation=$T/ctld
SlurmdSpoolDir=$T/slurmd
SlurmctldPidFile=$T/run/slurmctld.pid
SlurmdPidFile=$T/run/slurmd.pid
SlurmctldLogFile=$T/log/slurmctld.log
SlurmdLogFile=$T/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6820
AccountingStoragePass=$SOCK
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=1024 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
cat > "$T/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$SOCK
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6820
SlurmUser=root
PidFile=$T/run/slurmdbd.pid
LogFile=$T/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=6819
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
chmod 600 "$T/slurmdbd.conf"

# 4. the daemons, as root, each with its pid file
t0=$SECONDS
munged --socket="$SOCK" --pid-file="$T/run/munged.pid" --log-file="$T/log/munged.log" \
    --seed-file="$T/key/munged.seed" --key-file="$T/key/munge.key" || fail "munged did not start"
mariadb-install-db --no-defaults --datadir="$T/db" --user=root --skip-test-db \
    --auth-root-authentication-method=normal > "$T/log/mariadb-install.log" 2>&1 ||
    fail "mariadb-install-db failed"
mariadbd --no-defaults --datadir="$T/db" --user=root --bind-address=127.0.0.1 --port=6819 \
    --socket="$T/run/mysqld.sock" --pid-file="$T/run/mariadbd.pid" \
    --log-error="$T/log/mariadbd.log" \
    --skip-log-bin --innodb-buffer-pool-size=16M --innodb-log-file-size=8M > /dev/null 2>&1 &
DB="mariadb --no-defaults -S $T/run/mysqld.sock -u root"
until_ok 60 $DB -e 'select 1' || fail "MariaDB did not start"
$DB -e "create user 'slurm'@'127.0.0.1' identified by 'slurm';
        grant all on slurm_acct_db.* to 'slurm'@'127.0.0.1';"
slurmdbd || fail "slurmdbd did not start"
until_ok 60 sacctmgr -n list cluster || fail "slurmdbd does not answer"
sacctmgr -i add cluster nla > /dev/null
slurmctld || fail "slurmctld did not start"
slurmd -N localhost || fail "slurmd did not start"
idle() { [ "$(sinfo -h -n localhost -o %T)" = idle ]; }
until_ok 60 idle || fail "the node is not idle after 60 s"
echo "slurm-test: one node up (idle) in $((SECONDS - t0)) s"

# 5. the study: an unsharded reference run, then the README's script as an
#    array of 3 with the merge after it. --chunk 1 commits row by row, so a
#    task can be requeued between rows.
cd "$T/work"
ln -s "$ROOT/nla" nla
for m in target av ar; do ln -s "$ROOT/weights/tiny/$m" $m; done
for f in docs chats; do ln -s "$ROOT/tests/data/eval/$f.jsonl" $f.jsonl; done
STUDY="--min-position 10 --positions-per-record 2 --max-new 32 --chunk 1"
export OMP_WAIT_POLICY=passive
t0=$SECONDS
./nla eval target av ar --docs docs.jsonl --chats chats.jsonl --out unsharded --threads 1 --quiet \
    $STUDY 2> unsharded.err || fail "the unsharded run failed: $(cat unsharded.err)"
echo "slurm-test: unsharded run in $((SECONDS - t0)) s"
t0=$SECONDS
job=$(sbatch --parsable --array=1-3 --cpus-per-task=1 --mem=256M --time=10 \
    "$ROOT/tests/slurm/study.sbatch" $STUDY)
merge=$(sbatch --parsable --dependency=afterok:$job --cpus-per-task=1 --mem=256M --time=5 \
    --wrap './nla eval --merge results results.*')
echo "slurm-test: array job $job, merge job $merge"

# 6. once task 1 has committed a row, it is requeued, waits for its begin
#    time, which StartTime=now releases, and resumes
rows() { [ -f "results.1/results.jsonl" ] && [ "$(wc -l < results.1/results.jsonl)" -ge 1 ]; }
until_ok 120 rows || fail "task 1 committed no row in 120 s"
# a duplicate of the running task (a requeue racing its first run) is
# refused by the results folder's lock; task 1 is suspended meanwhile (a
# stopped process keeps its lock), so it cannot finish first
scontrol suspend "${job}_1"
SLURM_ARRAY_TASK_ID=1 SLURM_ARRAY_TASK_MIN=1 SLURM_ARRAY_TASK_COUNT=3 ./nla eval target av ar \
    --docs docs.jsonl --chats chats.jsonl --out results.1 --shard auto --threads 1 --chunk 32 \
    $STUDY 2> dup.err && fail "a duplicate of task 1 was not refused"
grep -q 'results.1/eval.lock is held by PID' dup.err || fail "duplicate refused: $(cat dup.err)"
echo "slurm-test: duplicate of ${job}_1 refused: $(cat dup.err)"
scontrol resume "${job}_1"
scontrol requeue "${job}_1"
echo "slurm-test: requeued ${job}_1 after $(wc -l < results.1/results.jsonl) rows"
pending() { [ "$(squeue -h -j "${job}_1" -o %T)" = PENDING ]; }
until_ok 30 pending || fail "${job}_1 is not pending after the requeue"
scontrol update JobId="${job}_1" StartTime=now

# 7. wait for the merge; the files must equal the unsharded run's
done_() { [ -z "$(squeue -h -j "$job,$merge")" ]; }
until_ok 300 done_ || fail "the jobs did not finish in 300 s"
echo "slurm-test: array and merge done in $((SECONDS - t0)) s"
# slurmdbd may record the end a moment after squeue forgets the job
merge_state() { sacct -n -X -j "$merge" -o State | tr -d ' '; }
ended() { case "$(merge_state)" in ""|PENDING|RUNNING|COMPLETING) return 1;; esac; }
until_ok 30 ended || true
state=$(merge_state)
[ "$state" = COMPLETED ] || fail "merge job $merge: ${state:-no sacct record}"
grep -q -E '\([1-9][0-9]* resumed' "slurm-${job}_1.out" ||
    fail "task 1 did not resume after its requeue"
grep -E ' rows in results\.1 ' "slurm-${job}_1.out"
sacct -D -j "$job,$merge" -o JobID,JobName%8,State,ExitCode,Start,End
FILES="params.json tokens.jsonl results.jsonl activations.npy reconstructions.npy"
for f in $FILES; do
    cmp "results/$f" "unsharded/$f" || fail "results/$f differs from the unsharded run"
done
(cd results && md5sum $FILES) | sed 's/^/merged     /'
(cd unsharded && md5sum $FILES) | sed 's/^/unsharded  /'
ok=1
