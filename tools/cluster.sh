#!/usr/bin/env bash
# A test cluster of N hosts on this machine (root): per host a network namespace (a veth on a
# private bridge), a UTS namespace (hostname nodeK) and a mount namespace (its own Slurm TmpFS);
# one munged, one slurmctld (in
# the root namespace, on the bridge address) and one slurmd per host started inside its
# namespaces with -N nodeK. Everything lives under one state directory; `down` stops every
# process the script started, every process left in the hosts' namespaces, and removes the
# namespaces, the bridge and the files.
#   bash tools/cluster.sh up N              # N hosts node1..nodeN (1..16); prints the SLURM_CONF line
#   bash tools/cluster.sh shape --rate 1gbit # tc tbf on both ends of every host's veth ("none" removes)
#   bash tools/cluster.sh status            # hosts, addresses, shaping, sinfo
#   bash tools/cluster.sh exec K CMD...     # run CMD inside host K's namespaces
#   bash tools/cluster.sh pids K            # processes inside host K's network namespace
#   bash tools/cluster.sh down              # stop everything, remove everything (safe to repeat)
# Environment: ANYK_CLUSTER_DIR (state dir, default /tmp/anyk-cluster), ANYK_CLUSTER_NET (the
# bridge's /24 prefix, default 10.77.0), ANYK_CLUSTER_CPUS (CPUs each host declares, default nproc),
# ANYK_CLUSTER_KILLWAIT (slurm.conf KillWait, default 5 s).
# Clients: `export SLURM_CONF=$ANYK_CLUSTER_DIR/slurm.conf` (or source $ANYK_CLUSTER_DIR/env.sh).
set -euo pipefail
STATE=${ANYK_CLUSTER_DIR:-/tmp/anyk-cluster}
NET=${ANYK_CLUSTER_NET:-10.77.0}
BR=anykbr0
NSPFX=anyk-node

say() { echo "cluster: $*"; }
die() {
  echo "cluster: error: $*" >&2
  exit 1
}
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }

[ "$(id -u)" = 0 ] || die "needs root (network namespaces, bridge, daemons)"

nodes() {  # the hosts of the running cluster, one per line (nodeK)
  if [ -f "$STATE/nodes" ]; then cat "$STATE/nodes"; fi
}
in_node() {  # in_node K CMD...: run CMD in host K's net and UTS namespaces
  local k=$1
  shift
  local pid
  pid=$(cat "$STATE/node$k/slurmd.pid" 2>/dev/null) || die "host $k: no slurmd pid file"
  nsenter -t "$pid" --net --uts --mount -- "$@"
}
wait_for() {  # wait_for SECONDS WHAT CMD...: poll CMD every 0.2 s
  local deadline=$(($(date +%s) + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$deadline" ] || die "$what: not after ${deadline}s"
    sleep 0.2
  done
}
stop_pid() {  # stop_pid PID: TERM, up to 10 s, then KILL (only pids this script recorded)
  local pid=$1 _
  kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.2
  done
  kill -9 "$pid" 2>/dev/null || true
}
free_port() {
  local p=$1
  while (echo >/dev/tcp/127.0.0.1/"$p") 2>/dev/null || ss -Hltn "sport = :$p" | grep -q .; do p=$((p + 1)); done
  echo "$p"
}

write_conf() {  # write_conf N CTLD_PORT
  local n=$1 port=$2 cpus=${ANYK_CLUSTER_CPUS:-$(nproc)} k list
  list="node[1-$n]"
  [ "$n" = 1 ] && list=node1
  cat >"$STATE/slurm.conf" <<EOF
# anyk test cluster (tools/cluster.sh): $n hosts in network namespaces on one machine.
ClusterName=anykcluster
SlurmctldHost=$(hostname -s)($NET.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=$port
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge/munge.sock
StateSaveLocation=$STATE/ctld
SlurmctldPidFile=$STATE/ctld/slurmctld.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdSpoolDir=$STATE/%n/spool
SlurmdPidFile=$STATE/%n/slurmd.pid
SlurmdLogFile=$STATE/log/%n.slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# The hosts share this machine's cores: no binding (task/affinity would pin every host's first
# task to core 0), no cgroups.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
SwitchType=switch/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=600
KillWait=${ANYK_CLUSTER_KILLWAIT:-5}
InactiveLimit=0
JobRequeue=1
SlurmdTimeout=60
TmpFS=$STATE/tmp
EOF
  for k in $(seq 1 "$n"); do
    echo "NodeName=node$k NodeAddr=$NET.$((10 + k)) NodeHostname=node$k CPUs=$cpus RealMemory=1000 State=UNKNOWN" >>"$STATE/slurm.conf"
  done
  echo "PartitionName=debug Nodes=$list Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES" >>"$STATE/slurm.conf"
}

net_up() {  # net_up N: bridge, and per host a netns, a UTS ns (hostname nodeK) and a veth
  local n=$1 k
  ip link add "$BR" type bridge
  ip addr add "$NET.1/24" dev "$BR"
  ip link set "$BR" up
  for k in $(seq 1 "$n"); do
    mkdir -p "$STATE/node$k"/{spool,tmp}
    ip netns add "$NSPFX$k"
    touch "$STATE/node$k/uts"
    unshare --uts="$STATE/node$k/uts" hostname "node$k"
    ip link add "anyk-v$k" type veth peer name "anyk-p$k"
    ip link set "anyk-v$k" master "$BR" up
    ip link set "anyk-p$k" netns "$NSPFX$k"
    ip -n "$NSPFX$k" link set "anyk-p$k" name eth0
    ip -n "$NSPFX$k" addr add "$NET.$((10 + k))/24" dev eth0
    ip -n "$NSPFX$k" link set eth0 up
    ip -n "$NSPFX$k" link set lo up
    # IPv4 only: Open MPI's TCP BTL otherwise also tries the veth's IPv6 link-local address, and a
    # connect() there failed now and then ("Operation now in progress (115)", then a crash).
    # shellcheck disable=SC2016  # expands in the inner sh
    ip netns exec "$NSPFX$k" sh -c 'for f in /proc/sys/net/ipv6/conf/*/disable_ipv6; do echo 1 >"$f"; done' 2>/dev/null || true
    echo "node$k" >>"$STATE/nodes"
  done
}

start_munge() {
  mkdir -p "$STATE/munge"
  chown munge:munge "$STATE/munge"
  chmod 700 "$STATE/munge"
  dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
  chown munge:munge "$STATE/munge/munge.key"
  chmod 400 "$STATE/munge/munge.key"
  setsid setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged --foreground --force \
    --socket="$STATE/munge/munge.sock" --key-file="$STATE/munge/munge.key" \
    --pid-file="$STATE/munge/munged.pid" --log-file="$STATE/munge/munged.log" \
    --seed-file="$STATE/munge/munged.seed" </dev/null >"$STATE/log/munged.out" 2>&1 &
  echo $! >>"$STATE/pids"
  wait_for 10 "munged socket" test -S "$STATE/munge/munge.sock"
}

cmd_up() {
  local n=${1:-}
  if ! [[ "$n" =~ ^[0-9]+$ ]] || [ "$n" -lt 1 ] || [ "$n" -gt 16 ]; then die "up N: N='$n' must be 1..16 (e.g. up 2)"; fi
  [ ! -e "$STATE/nodes" ] || die "a cluster is already up in $STATE (tools/cluster.sh down first)"
  ip link show "$BR" >/dev/null 2>&1 && die "bridge $BR exists (tools/cluster.sh down first)"
  for b in munged slurmctld slurmd srun sinfo nsenter unshare tc; do
    command -v "$b" >/dev/null || die "$b not found (apt-get install slurmctld slurmd slurm-client munge)"
  done
  mkdir -p "$STATE"/{log,ctld,tmp}
  chmod 755 "$STATE"
  : >"$STATE/pids"
  trap 'echo "cluster: up failed; tearing down" >&2; cmd_down >/dev/null 2>&1 || true' ERR
  net_up "$n"
  local port
  port=$(free_port 36817)
  write_conf "$n" "$port"
  echo "export SLURM_CONF=$STATE/slurm.conf" >"$STATE/env.sh"
  export SLURM_CONF=$STATE/slurm.conf
  start_munge
  setsid slurmctld -D -f "$SLURM_CONF" </dev/null >"$STATE/log/slurmctld.out" 2>&1 &
  echo $! >>"$STATE/pids"
  for k in $(seq 1 "$n"); do
    # Its own mount namespace too: $STATE/tmp (TmpFS, where Slurm's PMIx plugin makes
    # spmix_appdir_<uid>_<job>.<step>, the same name on every host) is host K's own directory.
    # shellcheck disable=SC2016  # $1.. expand in the inner sh
    setsid nsenter --net="/run/netns/$NSPFX$k" --uts="$STATE/node$k/uts" -- \
      unshare --mount --propagation slave -- sh -c 'mount --bind "$1" "$2" && shift 2 && exec "$@"' sh \
      "$STATE/node$k/tmp" "$STATE/tmp" slurmd -D -N "node$k" -f "$SLURM_CONF" \
      </dev/null >"$STATE/log/node$k.slurmd.out" 2>&1 &
    echo $! >>"$STATE/pids"
  done
  local deadline=$(($(date +%s) + 60)) idle
  while :; do
    idle=$(timeout 5 sinfo -h -N -t idle -o %N 2>/dev/null | sort -u | wc -l || true)
    [ "$idle" = "$n" ] && break
    if [ "$(date +%s)" -ge "$deadline" ]; then
      tail -n 5 "$STATE"/log/*.log >&2 || true
      die "only $idle of $n hosts idle after 60 s (logs in $STATE/log)"
    fi
    sleep 0.5
  done
  trap - ERR
  say "up: $n hosts node1..node$n ($NET.11..$NET.$((10 + n)) on bridge $BR), slurmctld on $NET.1:$port"
  say "use: export SLURM_CONF=$SLURM_CONF"
}

cmd_down() {
  local k pid
  if [ -f "$STATE/slurm.conf" ] && [ -f "$STATE/pids" ]; then
    SLURM_CONF=$STATE/slurm.conf timeout 10 scancel --quiet --full --signal=KILL --user=root >/dev/null 2>&1 || true
  fi
  # Whatever still runs inside a host (job steps, ranks), then the daemons.
  for k in $(seq 1 16); do
    ip netns list 2>/dev/null | grep -qw "$NSPFX$k" || continue
    for pid in $(ip netns pids "$NSPFX$k" 2>/dev/null); do
      grep -qx "$pid" "$STATE/pids" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
    done
  done
  if [ -f "$STATE/pids" ]; then
    # slurmds first, munged last (reverse start order)
    for pid in $(tac "$STATE/pids"); do stop_pid "$pid"; done
  fi
  for k in $(seq 1 16); do
    if ip netns list 2>/dev/null | grep -qw "$NSPFX$k"; then
      for pid in $(ip netns pids "$NSPFX$k" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
      ip netns del "$NSPFX$k" 2>/dev/null || true
    fi
    ip link del "anyk-v$k" 2>/dev/null || true
    if [ -e "$STATE/node$k/uts" ]; then
      umount "$STATE/node$k/uts" 2>/dev/null || true
    fi
  done
  ip link del "$BR" 2>/dev/null || true
  rm -rf "$STATE"
  say "down: no hosts, no bridge, no $STATE"
}

shape_one() {  # shape_one K RATE: tbf on both ends of host K's veth (egress each way)
  local k=$1 rate=$2 burst
  tc qdisc del dev "anyk-v$k" root 2>/dev/null || true
  ip netns exec "$NSPFX$k" tc qdisc del dev eth0 root 2>/dev/null || true
  [ "$rate" = none ] && return 0
  # veth hands tbf 64 KiB GSO packets: the bucket must hold one (and ~1 ms of traffic).
  burst=$(python3 -c "import sys; r = sys.argv[1].lower(); u = {'kbit': 1e3, 'mbit': 1e6, 'gbit': 1e9}
n = [k for k in u if r.endswith(k)]
bps = float(r[:-len(n[0])]) * u[n[0]] if n else float(r)
print(max(131072, int(bps / 8 / 1000)))" "$rate") || die "--rate $rate: use e.g. 200mbit, 1gbit or none"
  tc qdisc add dev "anyk-v$k" root tbf rate "$rate" burst "$burst" latency 100ms
  ip netns exec "$NSPFX$k" tc qdisc add dev eth0 root tbf rate "$rate" burst "$burst" latency 100ms
}

cmd_shape() {
  local rate=""
  while [ $# -gt 0 ]; do
    case $1 in
      --rate) rate=${2:-}; shift 2 ;;
      --rate=*) rate=${1#--rate=}; shift ;;
      *) die "shape: unknown argument '$1' (shape --rate 1gbit|200mbit|none)" ;;
    esac
  done
  [ -n "$rate" ] || die "shape needs --rate (e.g. --rate 1gbit, --rate none)"
  [[ "$rate" =~ ^([0-9.]+([kmg]bit)?|none)$ ]] || die "--rate $rate: use e.g. 200mbit, 1gbit or none"
  local k
  [ -n "$(nodes)" ] || die "no cluster is up in $STATE"
  for k in $(nodes); do shape_one "${k#node}" "$rate"; done
  echo "$rate" >"$STATE/rate"
  say "shape: every host's link ${rate/none/unshaped} (tbf, each direction)"
}

cmd_status() {
  [ -n "$(nodes)" ] || { say "no cluster in $STATE"; return 0; }
  local k
  for k in $(nodes); do
    echo "$k: $(in_node "${k#node}" hostname) $(ip -n "$NSPFX${k#node}" -4 -o addr show eth0 | awk '{print $4}')" \
      "qdisc: $(tc qdisc show dev "anyk-v${k#node}" | head -n 1 | cut -d' ' -f2-)"
  done
  SLURM_CONF=$STATE/slurm.conf sinfo -N
}

case ${1:-} in
  up) shift; cmd_up "$@" ;;
  down) cmd_down ;;
  shape) shift; cmd_shape "$@" ;;
  status) cmd_status ;;
  exec)
    shift
    [ $# -ge 2 ] || die "exec K CMD..."
    k=$1
    shift
    in_node "$k" "$@"
    ;;
  pids) ip netns pids "$NSPFX${2:?pids K}" ;;
  -h | --help | help) usage ;;
  *) usage >&2; exit 2 ;;
esac
