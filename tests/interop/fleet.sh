# A fleet on one machine: three terns, each in a network namespace of its
# own, behind a load balancer namespace whose nftables DNAT spreads new
# flows to 10.240.0.1:3478 over them in turn (numgen). A client in a fourth
# namespace keeps one UDP flow while `conntrack -F` on the balancer moves it
# to the next node in the middle of every allocation (fleet_client.py): its
# next request reaches a node that did not issue its nonce. With the
# fleet's shared nonce key no node answers 438; with a random key per node
# (the baseline) they do. Every namespace is made here
# and removed at the end, whatever happens. Needs root.
#
#   client 10.240.0.2 --- 10.240.0.1 lb (DNAT, the echo peer) --- 10.241.N.1
#                                                   node N 10.241.N.2 ---'

FL="tfl$$"
FL_SECRET="interop-fleet-rest-secret"
FL_NONCE="interop-fleet-nonce-secret-0123456789"
FL_ROUNDS=6
FL_PIDS=()

fl_ns_setup() {
  local i
  ip netns add "$FL-lb" && ip netns add "$FL-cli" || return 1
  ip netns exec "$FL-lb" sysctl -qw net.ipv4.ip_forward=1 || return 1
  ip link add "${FL}c" type veth peer name "${FL}l" || return 1
  ip link set "${FL}c" netns "$FL-cli" && ip link set "${FL}l" netns "$FL-lb" || return 1
  ip -n "$FL-cli" addr add 10.240.0.2/24 dev "${FL}c" && ip -n "$FL-lb" addr add 10.240.0.1/24 dev "${FL}l" || return 1
  ip -n "$FL-cli" link set "${FL}c" up && ip -n "$FL-lb" link set "${FL}l" up || return 1
  ip -n "$FL-cli" link set lo up && ip -n "$FL-lb" link set lo up || return 1
  for i in 1 2 3; do
    ip netns add "$FL-n$i" || return 1
    ip link add "${FL}n$i" type veth peer name "${FL}b$i" || return 1
    ip link set "${FL}n$i" netns "$FL-n$i" && ip link set "${FL}b$i" netns "$FL-lb" || return 1
    ip -n "$FL-n$i" addr add "10.241.$i.2/24" dev "${FL}n$i" && ip -n "$FL-lb" addr add "10.241.$i.1/24" dev "${FL}b$i" || return 1
    ip -n "$FL-n$i" link set "${FL}n$i" up && ip -n "$FL-lb" link set "${FL}b$i" up || return 1
    ip -n "$FL-n$i" link set lo up && ip -n "$FL-n$i" route add default via "10.241.$i.1" || return 1
  done
  ip netns exec "$FL-lb" nft -f - <<'NFT' || return 1
table ip fleet {
  chain prerouting {
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr 10.240.0.1 udp dport 3478 dnat to numgen inc mod 3 map { 0 : 10.241.1.2, 1 : 10.241.2.2, 2 : 10.241.3.2 }
  }
}
NFT
  FL_PEER=$(free_port)
  ip netns exec "$FL-lb" turnutils_peer -L 10.240.0.1 -p "$FL_PEER" >"$WORK/fleet-peer.log" 2>&1 &
  FL_PIDS+=("$!")
}

fl_ns_teardown() {
  local ns
  for ns in lb cli n1 n2 n3; do ip netns del "$FL-$ns" 2>/dev/null; done
}

# fl_nodes NONCE_TOML: (re)start the three terns with the same realm and
# REST secret, and NONCE_TOML in [auth].
fl_nodes() {
  local i p
  for p in "${FL_NODES[@]:-}"; do [ -n "$p" ] && { kill -INT "$p" 2>/dev/null; wait "$p" 2>/dev/null; }; done
  FL_NODES=()
  for i in 1 2 3; do
    TERN_WRAP="ip netns exec $FL-n$i" start_tern "fleet-n$i" "realm = \"fleet.test\"
[listen]
udp = [\"10.241.$i.2:3478\"]
tcp = []
[relay]
address-ipv4 = \"10.241.$i.2\"
address-ipv6 = \"none\"
[auth]
secrets = [\"$FL_SECRET\"]
$1
[peers]
allow = [\"10.240.0.1/32\"]
[admin]
listen = \"127.0.0.1:9641\"" || return 1
    FL_NODES+=("$TERN_PID")
  done
}

# fl_sum SERIES: the sum over the three nodes of every series whose name
# (with its labels) begins with SERIES.
fl_sum() {
  local i n sum=0
  for i in 1 2 3; do
    n=$(ip netns exec "$FL-n$i" curl -fsS http://127.0.0.1:9641/metrics |
        awk -v m="$1" 'index($1, m) == 1 {s += $2} END {print s + 0}')
    sum=$((sum + ${n:-0}))
  done
  echo "$sum"
}

# fl_stale: 438s the three nodes answered, from their metrics.
fl_stale() { fl_sum 'tern_auth_failures_total{reason="stale_nonce"}'; }

# fl_run: the client's rounds; sets FL_OUT (its JSON line) and FL_NODES_SEEN.
fl_run() {
  FL_OUT=$(ip netns exec "$FL-cli" timeout 120 "$ROOT/.venv/bin/python" "$ROOT/tests/interop/fleet_client.py" \
      10.240.0.1 3478 "$FL_SECRET" 10.240.0.1 "$FL_PEER" "$FL_ROUNDS" \
      ip netns exec "$FL-lb" conntrack -F 2>&1 | tail -1)
  read -r FL_NODES_SEEN FL_CLIENT_STALE FL_RELAYED FL_MISMATCHED < <(python3 -c '
import json, sys
v = json.loads(sys.stdin.read())
print(len(set(v["relays"])), v["stale"], v["relayed"], v["mismatched"])' <<<"$FL_OUT" 2>/dev/null)
  [ -n "$FL_NODES_SEEN" ] || { REASON="client: $FL_OUT"; return 1; }
  [ "$FL_NODES_SEEN" = 3 ] || { REASON="the flow was served by $FL_NODES_SEEN nodes, not moved over all 3: $FL_OUT"; return 1; }
  [ "$FL_RELAYED" = "$FL_ROUNDS" ] || { REASON="relayed in $FL_RELAYED of $FL_ROUNDS rounds: $FL_OUT"; return 1; }
  # The first two moved Refreshes reach nodes without the allocation.
  [ "${FL_MISMATCHED:-0}" -ge 2 ] || { REASON="no Refresh reached a node without its allocation: $FL_OUT"; return 1; }
  # Workers publish their counters once a second: wait until every
  # round's allocation is counted, so the 438 counts read next are too.
  local deadline=$((SECONDS + 10))
  until [ "$(fl_sum tern_allocations_created_total)" -ge "$FL_ROUNDS" ]; do
    [ $SECONDS -ge $deadline ] && { REASON="the nodes counted $(fl_sum tern_allocations_created_total) allocations, not $FL_ROUNDS"; return 1; }
    sleep 0.2
  done
}

case_fleet_shared_nonce() {
  fl_nodes "nonce-secrets = [\"$FL_NONCE\"]" || { REASON="the nodes did not start"; return 1; }
  fl_run || return 1
  [ "$FL_CLIENT_STALE" = 0 ] || { REASON="the client got $FL_CLIENT_STALE 438s: $FL_OUT"; return 1; }
  [ "$(fl_stale)" = 0 ] || { REASON="the nodes counted $(fl_stale) stale nonces"; return 1; }
}

case_fleet_baseline_random_nonce() {
  fl_nodes "" || { REASON="the nodes did not start"; return 1; }
  fl_run || return 1
  [ "$FL_CLIENT_STALE" -gt 0 ] && [ "$(fl_stale)" -gt 0 ] ||
    { REASON="no 438 with a random nonce key per node (client $FL_CLIENT_STALE, nodes $(fl_stale)): the test shows nothing"; return 1; }
}

fleet_cases() {
  selected fleet || return 0
  if [ "$(id -u)" != 0 ]; then
    skip_group fleet "needs root (network namespaces)"; return 0
  fi
  if ! command -v conntrack >/dev/null || ! command -v nft >/dev/null; then
    FAILED=$((FAILED + 1)); echo "FAIL fleet: conntrack or nft not installed (run scripts/setup)"; return
  fi
  FL_NODES=()
  CLEANUP_HOOKS+=(fl_ns_teardown)
  if fl_ns_setup; then
    local c
    for c in fleet_shared_nonce fleet_baseline_random_nonce; do
      selected "${c//_/-}" && run_case "${c//_/-}" "case_$c"
    done
  else
    FAILED=$((FAILED + 1)); echo "FAIL fleet: the namespaces did not come up"
  fi
  local p
  for p in "${FL_NODES[@]}"; do kill -INT "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  for p in "${FL_PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  fl_ns_teardown
}
