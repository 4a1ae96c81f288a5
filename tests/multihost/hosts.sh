#!/usr/bin/env bash
# Several "hosts" on one machine, for ddlab's multi-host tests (DESIGN.md decision 9).
#
# Each host is a network namespace with its own hostname (a UTS namespace, entered by
# the rsh agent), joined to the others by a Linux bridge through a veth pair. OpenMPI
# starts its daemons in them through an rsh agent script, so ranks on one host talk over
# shared memory and ranks on different hosts over TCP across the bridge. One host's link
# can be rate-limited (htb, both directions) or taken down. Needs root, iproute2 (ip, tc)
# and util-linux (unshare). Traffic stays on the bridge's private /24 and inside the
# namespaces this script creates.
#
#   hosts.sh up DIR M [--slots S] [--prefix P] [--rate HOST:RATE]
#       Makes M hosts named P-h1 … P-hM (P: a fresh random name unless given; at most
#       9 characters, [a-z0-9]) with S slots each (default 2) and writes DIR/env (the
#       OpenMPI settings, for `source`), DIR/hostfile and DIR/agent. RATE is tc's, e.g.
#       100mbit. On failure everything made so far is torn down again.
#   hosts.sh down DIR       Ends every process in the hosts and removes them. Idempotent.
#   hosts.sh run DIR CMD…   Runs CMD (e.g. `mpirun --hostfile DIR/hostfile -n 4 …`) with
#                           DIR/env exported: ranks then start in the hosts.
#   hosts.sh exec DIR N CMD…       Runs CMD inside host N (1…M), under its hostname.
#   hosts.sh link DIR N up|down    Takes host N's link up or down (both veth ends).
#   hosts.sh limit DIR N RATE|none [both|out|in]
#                                  Rate-limits host N's link (or lifts the limit): both
#                                  directions (default), only what it sends, or only
#                                  what it receives.
#   hosts.sh info DIR              Prints the hosts, their addresses and limits.
#
# Why binding is off and idle ranks yield (DIR/env): every host sees all of this
# machine's cores, so OpenMPI binds the first rank of every host to core 0, and no host
# knows that the machine is oversubscribed, so ranks busy-poll without yielding. Two
# polling ranks of different hosts then share one core, and each message waits for the
# scheduler to preempt the spinning one: about 8 ms per small message (two 4 ms ticks of
# a 250 Hz kernel) instead of tens of µs. Keepalives of 1 s on OpenMPI's own connections
# let mpirun notice a host whose link went down within seconds (the default: 8 minutes).
# See README, "Hosts on one machine".
set -euo pipefail

die() {
  echo "hosts.sh: $*" >&2
  exit 2
}

usage() {
  sed -n '/^#   hosts.sh/,/^#   hosts.sh info/p' "$0" | sed 's/^# \{0,3\}//' >&2
  exit 2
}

need_tools() {
  [ "$(id -u)" = 0 ] || die "needs root (network namespaces and veth pairs)"
  local t
  for t in ip unshare hostname; do
    command -v "$t" >/dev/null 2>&1 || die "needs '$t' on PATH (iproute2, util-linux)"
  done
}

# The state written by `up`: PREFIX, M, SUBNET (three octets), BRIDGE.
load() {
  [ -f "$1/state" ] || die "$1 holds no hosts (no $1/state): run 'hosts.sh up $1 M' first"
  # shellcheck disable=SC1091
  . "$1/state"
}

host_ns() { echo "$PREFIX-h$1"; }
host_veth() { echo "${PREFIX}v$1"; }

check_host() {
  [[ "$1" =~ ^[0-9]+$ ]] && [ "$1" -ge 1 ] && [ "$1" -le "$M" ] || die "no host '$1': hosts are 1 to $M"
}

set_limit() {
  local n=$1 rate=$2 dir=${3:-both} ns veth
  ns=$(host_ns "$n")
  veth=$(host_veth "$n")
  case $dir in both | out | in) ;; *) die "limit wants both, out or in, not '$dir'" ;; esac
  tc qdisc del dev "$veth" root 2>/dev/null || true
  ip netns exec "$ns" tc qdisc del dev eth0 root 2>/dev/null || true
  [ "$rate" = none ] && return 0
  command -v tc >/dev/null 2>&1 || die "needs 'tc' (iproute2) to limit a link"
  # htb with small bursts (16 KB), so that a 1 MB message after an idle moment is held
  # to the rate too. The bridge's end of the veth shapes what the host receives, the
  # namespace's end what it sends.
  if [ "$dir" != out ]; then
    tc qdisc add dev "$veth" root handle 1: htb default 1
    tc class add dev "$veth" parent 1: classid 1:1 htb rate "$rate" burst 16k cburst 16k quantum 65536
  fi
  if [ "$dir" != in ]; then
    ip netns exec "$ns" tc qdisc add dev eth0 root handle 1: htb default 1
    ip netns exec "$ns" tc class add dev eth0 parent 1: classid 1:1 htb rate "$rate" burst 16k cburst 16k quantum 65536
  fi
}

down() {
  local dir=$1 n ns pids
  [ -f "$dir/state" ] || return 0
  load "$dir"
  for n in $(seq 1 "$M"); do
    ns=$(host_ns "$n")
    ip netns list 2>/dev/null | grep -qw -- "$ns" || continue
    # Every process still inside the host: the daemons and ranks of a failed test.
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    if [ -n "$pids" ]; then
      # shellcheck disable=SC2086
      kill -9 $pids 2>/dev/null || true
    fi
  done
  for n in $(seq 1 "$M"); do
    ip netns del "$(host_ns "$n")" 2>/dev/null || true
    ip link del "$(host_veth "$n")" 2>/dev/null || true
  done
  ip link del "$BRIDGE" 2>/dev/null || true
  # OpenMPI's session directories of daemons that were killed.
  rm -rf /tmp/ompi."$PREFIX"-h* 2>/dev/null || true
  rm -f "$dir/state"
}

up() {
  local dir=$1 m=$2
  shift 2
  local slots=2 prefix="" rate=""
  while [ $# -gt 0 ]; do
    case $1 in
      --slots) slots=$2; shift 2 ;;
      --prefix) prefix=$2; shift 2 ;;
      --rate) rate=$2; shift 2 ;;
      *) die "unknown option '$1' (see hosts.sh --help)" ;;
    esac
  done
  [[ "$m" =~ ^[0-9]+$ ]] && [ "$m" -ge 1 ] && [ "$m" -le 16 ] || die "M must be 1 to 16 hosts, not '$m'"
  [[ "$slots" =~ ^[0-9]+$ ]] && [ "$slots" -ge 1 ] || die "--slots must be a positive number, not '$slots'"
  [ -z "$prefix" ] && prefix="dd$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
  [[ "$prefix" =~ ^[a-z][a-z0-9]{0,8}$ ]] || die "--prefix must be 1 to 9 characters [a-z0-9], starting with a letter, not '$prefix'"
  need_tools
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [ -f "$dir/state" ] && die "$dir already holds hosts: run 'hosts.sh down $dir' first"
  ip link show "${prefix}br" >/dev/null 2>&1 && die "hosts named '$prefix' already exist: pick another --prefix"

  # A free private /24 for the bridge, picked under a lock so parallel test runs differ.
  exec 9>/run/ddlab-hosts.lock
  flock 9
  local used k subnet=""
  used=$(ip -4 -o addr show | awk '{print $4}')
  for k in $(seq 1 254); do
    if ! grep -q "^10\.250\.$k\." <<<"$used"; then
      subnet="10.250.$k"
      break
    fi
  done
  [ -n "$subnet" ] || die "no free subnet in 10.250.0.0/16"
  PREFIX=$prefix M=$m SUBNET=$subnet BRIDGE="${prefix}br"
  printf 'PREFIX=%s\nM=%s\nSUBNET=%s\nBRIDGE=%s\n' "$PREFIX" "$M" "$SUBNET" "$BRIDGE" >"$dir/state"
  # Anything that fails from here (or an interrupt) tears down what was made.
  UP_DIR=$dir
  trap '[ -n "${UP_DIR:-}" ] && down "$UP_DIR"' EXIT
  trap 'exit 130' INT TERM

  ip link add "$BRIDGE" type bridge
  ip addr add "$SUBNET.254/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  flock -u 9
  exec 9>&-

  local n ns veth
  for n in $(seq 1 "$m"); do
    ns=$(host_ns "$n")
    veth=$(host_veth "$n")
    ip netns add "$ns"
    ip link add "$veth" type veth peer name "${veth}p"
    ip link set "${veth}p" netns "$ns"
    ip netns exec "$ns" ip link set "${veth}p" name eth0
    ip netns exec "$ns" ip addr add "$SUBNET.$n/24" dev eth0
    ip netns exec "$ns" ip link set eth0 up
    ip netns exec "$ns" ip link set lo up
    ip link set "$veth" master "$BRIDGE"
    ip link set "$veth" up
  done
  if [ -n "$rate" ]; then
    local h=${rate%%:*} r=${rate#*:}
    [ "$h" != "$rate" ] || die "--rate wants HOST:RATE, e.g. 2:100mbit"
    check_host "$h"
    set_limit "$h" "$r"
  fi

  # The rsh agent OpenMPI calls as `agent [options] HOST COMMAND…`: it runs the command
  # inside that host's namespace, under its hostname, with mpirun's environment.
  cat >"$dir/agent" <<EOF
#!/usr/bin/env bash
set -euo pipefail
while [ \$# -gt 0 ] && [ "\${1#-}" != "\$1" ]; do shift; done
host=\$1
shift
case \$host in
  $PREFIX-h[0-9]*) ;;
  *) echo "hosts agent: '\$host' is not one of the test hosts ($PREFIX-h1 …)" >&2; exit 255 ;;
esac
exec ip netns exec "\$host" unshare --uts sh -c 'hostname "\$0"; exec sh -c "\$1"' "\$host" "\$*"
EOF
  chmod +x "$dir/agent"
  : >"$dir/hostfile"
  for n in $(seq 1 "$m"); do
    echo "$(host_ns "$n") slots=$slots" >>"$dir/hostfile"
  done
  # OpenMPI's settings: launch through the agent, talk over the bridge, one daemon per
  # host started by mpirun itself (no tree), no binding (see the header).
  cat >"$dir/env" <<EOF
export OMPI_MCA_plm_rsh_agent=$dir/agent
export OMPI_MCA_plm_rsh_no_tree_spawn=1
export OMPI_MCA_oob_tcp_if_include=$SUBNET.0/24
export OMPI_MCA_btl_tcp_if_include=$SUBNET.0/24
export OMPI_MCA_hwloc_base_binding_policy=none
export OMPI_MCA_mpi_yield_when_idle=1
export OMPI_MCA_oob_tcp_keepalive_time=1
export OMPI_MCA_oob_tcp_keepalive_intvl=1
export OMPI_MCA_oob_tcp_keepalive_probes=3
export OMPI_MCA_rmaps_base_oversubscribe=1
export OMPI_ALLOW_RUN_AS_ROOT=1
export OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export DDLAB_HOSTS_DIR=$dir
export DDLAB_HOSTS_HOSTFILE=$dir/hostfile
export DDLAB_HOSTS_BRIDGE_ADDR=$SUBNET.254
EOF
  UP_DIR=""
  trap - EXIT INT TERM
  info "$dir"
}

info() {
  load "$1"
  local n ns veth q
  echo "hosts in $1: bridge $BRIDGE at $SUBNET.254/24"
  for n in $(seq 1 "$M"); do
    ns=$(host_ns "$n")
    veth=$(host_veth "$n")
    q=$( (tc class show dev "$veth"; ip netns exec "$ns" tc class show dev eth0) 2>/dev/null | grep -o 'rate [^ ]*' | head -1 || true)
    echo "  $ns  $SUBNET.$n  link $(cat "/sys/class/net/$veth/operstate" 2>/dev/null || echo gone)${q:+  limited to ${q#rate }}"
  done
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case $cmd in
  up)
    [ $# -ge 2 ] || usage
    up "$@"
    ;;
  down)
    [ $# -eq 1 ] || usage
    down "$1"
    ;;
  run)
    [ $# -ge 2 ] || usage
    load "$1"
    # shellcheck disable=SC1091
    . "$1/env"
    shift
    exec "$@"
    ;;
  exec)
    [ $# -ge 3 ] || usage
    load "$1"
    check_host "$2"
    ns=$(host_ns "$2")
    shift 2
    exec ip netns exec "$ns" unshare --uts sh -c 'hostname "$0"; exec "$@"' "$ns" "$@"
    ;;
  link)
    [ $# -eq 3 ] || usage
    load "$1"
    check_host "$2"
    case $3 in up | down) ;; *) die "link wants up or down, not '$3'" ;; esac
    ip link set "$(host_veth "$2")" "$3"
    ip netns exec "$(host_ns "$2")" ip link set eth0 "$3"
    ;;
  limit)
    [ $# -eq 3 ] || [ $# -eq 4 ] || usage
    load "$1"
    check_host "$2"
    set_limit "$2" "$3" "${4:-both}"
    ;;
  info)
    [ $# -eq 1 ] || usage
    info "$1"
    ;;
  -h | --help | help) usage ;;
  *) die "unknown command '$cmd': use up, down, run, exec, link, limit or info" ;;
esac
