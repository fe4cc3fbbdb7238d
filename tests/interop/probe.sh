# `tern probe` across a network: a client namespace and a server namespace
# made here, joined by a veth pair (10.231.0.2 -> 10.231.0.1), removed at
# the end. A good tern passes; with nftables dropping the relay port range
# in the server namespace, and with an external-ipv4 that is not the
# server's (routed into the server namespace, where it goes nowhere), each
# gets its own diagnosis. Nothing leaves the two namespaces. Needs root.

PN_SRV="tern-probe-srv-$$"
PN_CLI="tern-probe-cli-$$"
PN_SECRET="interop-probe-secret"
PN_PIDS=()

probe_ns_setup() {
  ip netns add "$PN_SRV" && ip netns add "$PN_CLI" || return 1
  ip link add "tps$$" type veth peer name "tpc$$" || return 1
  ip link set "tps$$" netns "$PN_SRV" && ip link set "tpc$$" netns "$PN_CLI" || return 1
  ip -n "$PN_SRV" addr add 10.231.0.1/24 dev "tps$$" && ip -n "$PN_CLI" addr add 10.231.0.2/24 dev "tpc$$" || return 1
  ip -n "$PN_SRV" link set "tps$$" up && ip -n "$PN_CLI" link set "tpc$$" up || return 1
  ip -n "$PN_SRV" link set lo up && ip -n "$PN_CLI" link set lo up || return 1
  # Where the wrong external address leads: into the server namespace,
  # which does not forward it.
  ip -n "$PN_CLI" route add 203.0.113.0/24 via 10.231.0.1 || return 1
  pn_tern good 3478 "" && pn_tern wrong-external 3479 'external-ipv4 = "203.0.113.9"'
}

probe_ns_teardown() {
  ip netns del "$PN_SRV" 2>/dev/null
  ip netns del "$PN_CLI" 2>/dev/null
}

# pn_tern NAME PORT RELAY_EXTRA: a tern in the server namespace on PORT.
pn_tern() {
  TERN_WRAP="ip netns exec $PN_SRV" start_tern "probe-$1" "[listen]
udp = [\"10.231.0.1:$2\"]
tcp = [\"10.231.0.1:$2\"]
[relay]
address-ipv4 = \"10.231.0.1\"
address-ipv6 = \"none\"
$3
[auth]
secrets = [\"$PN_SECRET\"]
[peers]
allow = [\"10.231.0.0/24\"]
[admin]
listen = \"127.0.0.1:0\"" || return 1
  PN_PIDS+=("$TERN_PID")
}

# pn_probe PORT: tern probe from the client namespace; sets PN_OUT, returns its exit status.
pn_probe() {
  PN_OUT=$(ip netns exec "$PN_CLI" timeout 60 "$TERN_BIN" probe "turn:10.231.0.1:$1" --secret "$PN_SECRET" --timeout-seconds 2 2>&1)
}

case_probe_netns_good() {
  pn_probe 3478 && return 0
  REASON="$(grep FAIL <<<"$PN_OUT" | head -2 | tr '\n' ' ')"
  return 1
}

case_probe_netns_relay_firewall() {
  ip netns exec "$PN_SRV" nft -f - <<'EOF' || { REASON="nft failed"; return 1; }
table inet tern_probe {
  chain input {
    type filter hook input priority 0; policy accept;
    udp dport 49152-65535 drop
  }
}
EOF
  pn_probe 3478
  local rc=$?
  ip netns exec "$PN_SRV" nft delete table inet tern_probe
  [ $rc -ne 0 ] || { REASON="the probe passed through a dropped relay range"; return 1; }
  local l
  for t in udp tcp; do
    l=$(grep "^FAIL $t relay inbound:" <<<"$PN_OUT")
    grep -q "a firewall drops UDP to the relay ports" <<<"$l" || { REASON="$t: ${l:-no relay inbound failure}"; return 1; }
  done
  grep -q "^PASS udp allocate" <<<"$PN_OUT" || { REASON="allocate failed too: $(grep FAIL <<<"$PN_OUT" | head -1)"; return 1; }
}

case_probe_netns_wrong_external() {
  pn_probe 3479 && { REASON="the probe passed with a wrong external-ipv4"; return 1; }
  local l
  l=$(grep "^FAIL udp relay inbound:" <<<"$PN_OUT")
  grep -q "203.0.113.9 is not where the server receives" <<<"$l" && grep -q "set \[relay\] external-ipv4" <<<"$l" ||
    { REASON="${l:-no relay inbound failure}"; return 1; }
  grep -q "^PASS udp relayed address: 203.0.113.9" <<<"$PN_OUT" || { REASON="relayed address stage: $(grep 'relayed address' <<<"$PN_OUT" | head -1)"; return 1; }
}

probe_cases() {
  selected probe || return 0
  if [ "$(id -u)" != 0 ]; then
    skip_group probe-netns "needs root (network namespaces)"; return 0
  fi
  if ! command -v nft >/dev/null; then
    FAILED=$((FAILED + 1)); echo "FAIL probe: nft not installed (run scripts/setup)"; return
  fi
  if ! probe_ns_setup; then
    FAILED=$((FAILED + 1)); echo "FAIL probe: namespaces or tern did not start"
    for p in "${PN_PIDS[@]}"; do kill -INT "$p" 2>/dev/null; done
    probe_ns_teardown; return
  fi
  local c
  for c in probe_netns_good probe_netns_relay_firewall probe_netns_wrong_external; do
    selected "${c//_/-}" && run_case "${c//_/-}" "case_$c"
  done
  local p
  for p in "${PN_PIDS[@]}"; do kill -INT "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  probe_ns_teardown
}
