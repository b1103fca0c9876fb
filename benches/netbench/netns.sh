#!/usr/bin/env bash
# A network-bound testbed of Linux network namespaces: N rank namespaces, each with one host
# link (a veth pair) to a Linux bridge in a switch namespace, every link shaped with tbf in both
# directions, optional random loss (nftables), configurable MTU.
#
#   netns.sh up     [--prefix P] [--ranks N] [--rate 1gbit] [--burst 128kb] [--limit 512kb]
#                   [--host-limit 8mb] [--mtu 1500] [--loss PCT] [--subnet 10.231.7]
#   netns.sh loss   [--prefix P] [--loss PCT]      # replace the loss rules (0 removes them)
#   netns.sh stats  [--prefix P]                   # JSON: tbf and nftables counters per link
#   netns.sh down   [--prefix P]                   # idempotent; also kills leftover processes
#   (every command also takes --owner PID and --force, see OWNER below)
#   netns.sh exec   [--prefix P] sw|RANK CMD...    # run CMD in the switch or a rank namespace
#
# Layout (prefix P, subnet S):
#
#   P-r0: eth0 S.1 ─┐                       ┌─ P-sw: bridge br0 S.254 (the switch process)
#   P-r1: eth0 S.2 ─┼── veth ── pI ── br0 ──┘
#   ...             ┘
#
# Each host link is one veth pair: `eth0` in the rank namespace, `pI` (a bridge port) in the
# switch namespace, so the switch sees one link per rank as a hardware switch port would, and
# rank-to-rank traffic (ring, gloo) crosses two shaped links like it would through a ToR.
# Shaping: a tbf root qdisc on the egress of *both* ends of every pair (eth0: rank -> switch,
# pI: switch -> rank).
#   --rate   token rate (tc units: 1gbit, 100mbit, ...).
#   --burst  bucket size: bytes that may leave back to back at veth speed. 128kb (~1 ms of
#            1 Gbit/s) holds one 64 KB GSO super-packet (what TCP hands the qdisc) with room to
#            spare; measured TCP goodput through two shaped hops at 1gbit: 0.80-0.88 Gbit/s with
#            64kb (tbf has to segment the super-packets), 0.95 Gbit/s with 100kb-256kb. It also
#            bounds the error on short messages: at most ~1 ms per link goes out unpaced.
#   --limit  queue of a *switch port* (pI, switch -> rank) before tbf drops. 512kb is about
#            4 ms at 1 Gbit/s, in the range of a shallow-buffer ToR port. Too small turns every
#            burst (a multicast of results, an incast of N-1 peers into one port) into loss;
#            too large hides pacing problems behind queueing delay. `stats` reports tbf drops
#            so either case is visible.
#   --host-limit  queue of a *host NIC* (eth0, rank -> switch). A real host does not drop its
#            own TCP at its NIC: the driver queue back-pressures the stack. TCP Small Queues
#            let one flow put up to net.ipv4.tcp_limit_output_bytes (4 MB on this kernel) into
#            the qdisc, so anything below that makes local TCP senders (ring, gloo) lose packets
#            at their own NIC (measured: ~1,000-3,000 tbf drops per cell with 512kb). UDP
#            senders are bounded by their socket send buffer. Default 8mb.
#   --loss   percent of packets dropped at random by nftables (`numgen random`) where they
#            arrive: at every rank's eth0 (from the switch and from other ranks) and at the
#            switch's bridge (from each rank), all protocols: every path loses that share, as
#            behind a lossy link. Not at the sender's output hook: the sender's stack would
#            see that drop as an error, not a loss. Resolution 0.01 %.
#   --mtu    MTU of every link and the bridge (1500; 9000 for jumbo frames).
#
# State is written to /run/sketchreduce-netbench/P.env (shell syntax) for other scripts,
# including OWNER, the pid that brought the testbed up (--owner PID, default: the caller's
# parent, e.g. your shell). While the owner lives, `up`, `down` and `loss` from anyone else
# refuse (a second `up` with the same prefix would otherwise tear down a running benchmark);
# --force overrides. A testbed whose owner is gone is a leftover: `up` and `down` remove it.
# Needs root. Names: namespaces P-sw, P-rI; the default prefix `sknb` does not collide with the
# test suite's (skrns*, skb*, skv*).
set -Eeuo pipefail

die() { echo "netns.sh: $*" >&2; exit 1; }

CMD="${1:-}"
[ -n "$CMD" ] || die "usage: netns.sh up|down|loss|stats|exec [options] (see the header of this file)"
shift
OWNER=$PPID FORCE=0 PREFIX=sknb RANKS=4 RATE=1gbit BURST=128kb LIMIT=512kb HOST_LIMIT=8mb MTU=1500 LOSS=0 SUBNET=10.231.7
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX="$2"; shift 2 ;;
        --ranks) RANKS="$2"; shift 2 ;;
        --rate) RATE="$2"; shift 2 ;;
        --burst) BURST="$2"; shift 2 ;;
        --limit) LIMIT="$2"; shift 2 ;;
        --host-limit) HOST_LIMIT="$2"; shift 2 ;;
        --mtu) MTU="$2"; shift 2 ;;
        --loss) LOSS="$2"; shift 2 ;;
        --subnet) SUBNET="$2"; shift 2 ;;
        --owner) OWNER="$2"; shift 2 ;;
        --force) FORCE=1; shift ;;
        --) shift; break ;;
        -*) die "unknown option $1" ;;
        *) break ;;
    esac
done

[ "$(id -u)" = 0 ] || die "needs root (ip netns, tc, nft); run it as root or with sudo"
for t in ip tc nft; do command -v "$t" >/dev/null || die "$t not found (apt-get install iproute2 nftables)"; done
[[ "$PREFIX" =~ ^[a-z][a-z0-9]{0,7}$ ]] || die "--prefix must be 1-8 lowercase letters/digits (interface names are limited to 15 characters)"
[[ "$RANKS" =~ ^[0-9]+$ ]] && [ "$RANKS" -ge 1 ] && [ "$RANKS" -le 32 ] || die "--ranks must be 1..32"
[[ "$SUBNET" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--subnet is the first three octets of a /24, e.g. 10.231.7"
[[ "$MTU" =~ ^[0-9]+$ ]] && [ "$MTU" -ge 1280 ] && [ "$MTU" -le 9000 ] || die "--mtu must be 1280..9000"
[[ "$LOSS" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--loss is a percentage, e.g. 1 or 0.5"

SW="$PREFIX-sw"
STATE_DIR=/run/sketchreduce-netbench
STATE="$STATE_DIR/$PREFIX.env"
rank_ns() { echo "$PREFIX-r$1"; }
ns_exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }
# Every namespace of this prefix that exists now (leftovers included, whatever their count).
our_namespaces() { ip netns list | awk '{print $1}' | grep -E "^$PREFIX-(sw|r[0-9]+)$" || true; }

# Refuses to touch a testbed that another live process owns.
check_owner() {
    [ "$FORCE" = 0 ] && [ -f "$STATE" ] || return 0
    local owner
    owner="$(sed -n 's/^OWNER=//p' "$STATE")"
    if [ -n "$owner" ] && [ "$owner" != "$OWNER" ] && kill -0 "$owner" 2>/dev/null; then
        die "testbed '$PREFIX' is in use by pid $owner ($(tr '\0' ' ' < "/proc/$owner/cmdline" 2>/dev/null | cut -c1-80)); pick another --prefix, or --force"
    fi
}

# Loss in hundredths of a percent, for `numgen random mod 10000 < N`.
loss_units() { awk -v p="$1" 'BEGIN { printf "%d", p * 100 + 0.5 }'; }

# Loss happens on arrival (input hook), where a lossy link would make a packet vanish: a
# drop at the sender's own output hook is not a loss to TCP (the stack sees the error and
# retries on its 200 ms probe timer), so the old output-hook rule stalled the TCP ring for
# 200 ms per hit and measured the emulation, not the protocol.
# Replaces namespace $1's loss table with one input chain holding the rules in $2 (one per
# line); no rules, no table.
loss_table() {
    local ns="$1" rules="$2"
    ip netns exec "$ns" nft delete table inet sknb_loss 2>/dev/null || true
    [ -n "$rules" ] || return 0
    ip netns exec "$ns" nft -f - <<EOF
table inet sknb_loss {
    chain in {
        type filter hook input priority -10; policy accept;
$rules
    }
}
EOF
}

# Rank namespaces: everything arriving on eth0 (from the switch and from other ranks).
set_loss() {
    local units rule=""
    units="$(loss_units "$LOSS")"
    [ "$units" -gt 0 ] && rule="iifname \"eth0\" numgen random mod 10000 < $units counter drop"
    loss_table "$1" "$rule"
}

# The switch namespace: what each rank sends to the switch (one rule per rank, so drops are
# counted per link).
set_loss_switch() {
    local units i rules=""
    units="$(loss_units "$LOSS")"
    if [ "$units" -gt 0 ]; then
        for i in $(seq 0 $((RANKS - 1))); do
            rules="${rules}iifname \"br0\" ip saddr $SUBNET.$((i + 1)) numgen random mod 10000 < $units counter drop
"
        done
    fi
    loss_table "$SW" "$rules"
}

shape() {
    local ns="$1" dev="$2" limit="$3"
    ip netns exec "$ns" tc qdisc replace dev "$dev" root tbf rate "$RATE" burst "$BURST" limit "$limit"
}

down() {
    local ns pid
    for ns in $(our_namespaces); do
        # Processes still inside (a crashed run's switch or ranks) would keep it alive.
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill "$pid" 2>/dev/null || true; done
    done
    sleep 0.2
    for ns in $(our_namespaces); do
        for pid in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
        ip netns del "$ns" 2>/dev/null || true
    done
    # veth ends still in the root namespace after a setup that died half-way.
    for l in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^${PREFIX}[hp][0-9]+$" || true); do
        ip link del "$l" 2>/dev/null || true
    done
    rm -f "$STATE"
}

up() {
    down
    # A step that fails half-way (set -e) must not leave a partial testbed behind.
    trap 'echo "netns.sh: setup failed, removing the partial testbed" >&2; down' ERR
    mkdir -p "$STATE_DIR"
    ip netns add "$SW"
    ip -n "$SW" link set lo up
    ip -n "$SW" link add br0 type bridge
    ip -n "$SW" link set br0 mtu "$MTU"
    set_loss_switch
    ip -n "$SW" addr add "$SUBNET.254/24" dev br0
    for i in $(seq 0 $((RANKS - 1))); do
        local ns h p
        ns="$(rank_ns "$i")" h="${PREFIX}h$i" p="${PREFIX}p$i"
        ip netns add "$ns"
        ip -n "$ns" link set lo up
        ip link add "$h" mtu "$MTU" type veth peer name "$p" mtu "$MTU"
        ip link set "$h" netns "$ns"
        ip link set "$p" netns "$SW"
        ip -n "$ns" link set "$h" name eth0
        ip -n "$SW" link set "$p" name "p$i"
        ip -n "$SW" link set "p$i" master br0
        ip -n "$ns" addr add "$SUBNET.$((i + 1))/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$SW" link set "p$i" up
        shape "$ns" eth0 "$HOST_LIMIT"
        shape "$SW" "p$i" "$LIMIT"
        set_loss "$ns"
    done
    ip -n "$SW" link set br0 up
    # The bridge's own MTU follows its smallest port; set it again now that ports exist.
    ip -n "$SW" link set br0 mtu "$MTU"
    {
        echo "OWNER=$OWNER"
        echo "PREFIX=$PREFIX"
        echo "RANKS=$RANKS"
        echo "SWITCH_NS=$SW"
        echo "SWITCH_IP=$SUBNET.254"
        echo "RANK_NS_PREFIX=$PREFIX-r"
        echo "RANK_IP_BASE=$SUBNET"
        echo "RANK_IFNAME=eth0"
        echo "RATE=$RATE BURST=$BURST LIMIT=$LIMIT HOST_LIMIT=$HOST_LIMIT MTU=$MTU LOSS=$LOSS"
    } > "$STATE"
    # Wait until both ends of every link report carrier (there is no ping on minimal hosts).
    for i in $(seq 0 $((RANKS - 1))); do
        local ok=0
        for _ in $(seq 1 50); do
            if ip -n "$(rank_ns "$i")" -o link show eth0 | grep -q 'state UP' \
                && ip -n "$SW" -o link show "p$i" | grep -q 'state UP'; then ok=1; break; fi
            sleep 0.1
        done
        [ "$ok" = 1 ] || die "link of rank $i did not come up"
    done
    trap - ERR
    echo "netns.sh: up: $RANKS ranks ($PREFIX-r0..$PREFIX-r$((RANKS - 1)), $SUBNET.1..), switch namespace $SW ($SUBNET.254), rate $RATE burst $BURST limit $LIMIT (switch ports) / $HOST_LIMIT (hosts) mtu $MTU loss $LOSS%" >&2
}

# JSON counters: per rank link, the tbf qdisc of both ends and the nftables drops.
stats() {
    local first=1 i ns
    printf '{"links":['
    for ns in $(our_namespaces); do
        case "$ns" in "$SW") continue ;; esac
        i="${ns##*-r}"
        [ $first = 1 ] || printf ','
        first=0
        local up dn nft
        up="$(ip netns exec "$ns" tc -s -j qdisc show dev eth0 2>/dev/null || echo '[]')"
        dn="$(ip netns exec "$SW" tc -s -j qdisc show dev "p$i" 2>/dev/null || echo '[]')"
        nft="$({ ip netns exec "$ns" nft list table inet sknb_loss 2>/dev/null
                 ip netns exec "$SW" nft list table inet sknb_loss 2>/dev/null \
                     | grep -F "saddr $SUBNET.$((i + 1)) "; } \
            | sed -n 's/.*counter packets \([0-9]*\) bytes.*/\1/p' | awk '{s += $1} END {print s + 0}' || true)"
        printf '{"rank":%s,"up":%s,"down":%s,"nft_drops":%s}' "$i" "$up" "$dn" "${nft:-0}"
    done
    printf ']}\n'
}

# `loss` and `stats` act on the testbed brought up earlier: its rank count and subnet.
if [ "$CMD" != up ] && [ -f "$STATE" ]; then
    RANKS="$(sed -n 's/^RANKS=//p' "$STATE")"
    SUBNET="$(sed -n 's/^RANK_IP_BASE=//p' "$STATE")"
fi

case "$CMD" in
    up) check_owner; up ;;
    down) check_owner; down ;;
    loss)
        check_owner
        for ns in $(our_namespaces); do
            case "$ns" in "$SW") ;; *) set_loss "$ns" ;; esac
        done
        set_loss_switch ;;
    stats) stats ;;
    exec)
        [ $# -ge 2 ] || die "usage: netns.sh exec [--prefix P] sw|RANK CMD..."
        who="$1"; shift
        if [ "$who" = sw ]; then ns="$SW"; else ns="$(rank_ns "$who")"; fi
        ns_exists "$ns" || die "namespace $ns does not exist (netns.sh up first)"
        exec ip netns exec "$ns" "$@" ;;
    *) die "unknown command $CMD (up|down|loss|stats|exec)" ;;
esac
