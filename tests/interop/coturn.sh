# Interop cases with coturn's tools (Debian package coturn): turnutils_stunclient,
# turnutils_uclient with turnutils_peer as the echo peer.

COTURN_SECRET="interop-rest-secret"

coturn_setup() {
  TERN_PORT=$(free_port)
  PEER_PORT=$(free_port)
  turnutils_peer -L 127.0.0.1 -p "$PEER_PORT" >"$WORK/peer.log" 2>&1 &
  PIDS+=("$!")
  start_tern coturn "realm = \"interop.test\"
[listen]
udp = [\"127.0.0.1:$TERN_PORT\", \"[::1]:$TERN_PORT\"]
tcp = [\"127.0.0.1:$TERN_PORT\", \"[::1]:$TERN_PORT\"]
[relay]
address-ipv4 = \"127.0.0.1\"
address-ipv6 = \"::1\"
[auth]
secrets = [\"$COTURN_SECRET\"]
[[auth.users]]
name = \"alice\"
password = \"wonderland\"
[allocations]
# turnutils_uclient picks channel numbers from the RFC 5766 range.
legacy-channel-numbers = true
[peers]
allow = [\"127.0.0.1/32\", \"::1/128\"]
[admin]
listen = \"127.0.0.1:0\""
}

stunclient() { # FAMILY_ADDR EXPECT
  local out
  out=$(timeout 10 turnutils_stunclient -p "$TERN_PORT" "$1" 2>&1)
  if grep -q "UDP reflexive addr: $2" <<<"$out"; then return 0; fi
  REASON="no mapped address in: $(tail -2 <<<"$out" | tr '\n' ' ')"
  return 1
}
case_stun_ipv4() { stunclient 127.0.0.1 "127.0.0.1:"; }
case_stun_ipv6() { stunclient ::1 "::1"; }

# uclient ARGS...: relay 5 clients x 50 packets through tern to the echo
# peer; require every packet back.
uclient() {
  local out n=50 m=5
  out=$(timeout 60 turnutils_uclient -n $n -m $m -l 170 -e 127.0.0.1 -r "$PEER_PORT" \
        -p "$TERN_PORT" "$@" 127.0.0.1 2>&1)
  # The closing totals line (the one without msz=): sent == received, and at
  # least n*m packets (uclient may run one client more than -m).
  local totals sent recv
  totals=$(grep -E 'start_mclient: tot_send_msgs=[0-9]+, tot_recv_msgs=[0-9]+$' <<<"$out" | tail -1)
  sent=$(sed -E 's/.*tot_send_msgs=([0-9]+).*/\1/' <<<"$totals")
  recv=$(sed -E 's/.*tot_recv_msgs=([0-9]+).*/\1/' <<<"$totals")
  if [ -n "$totals" ] && [ "$sent" -ge $((n * m)) ] && [ "$sent" = "$recv" ] \
     && grep -q "Total lost packets 0 (0.000000%)" <<<"$out"; then
    return 0
  fi
  REASON="$(grep -E 'tot_send_msgs=[0-9]+, tot_recv|lost packets|ERROR' <<<"$out" | tail -3 | tr '\n' ' ')"
  return 1
}
case_udp_channel_rest() { uclient -W "$COTURN_SECRET"; }
case_udp_send_rest() { uclient -s -W "$COTURN_SECRET"; }
case_tcp_channel_rest() { uclient -t -W "$COTURN_SECRET"; }
case_tcp_send_rest() { uclient -t -s -W "$COTURN_SECRET"; }
case_udp_channel_static() { uclient -u alice -w wonderland; }
case_tcp_send_static() { uclient -t -s -u alice -w wonderland; }

# A wrong credential must not allocate.
refused() {
  local out
  out=$(timeout 30 turnutils_uclient -n 5 -m 1 -l 170 -e 127.0.0.1 -r "$PEER_PORT" \
        -p "$TERN_PORT" "$@" 127.0.0.1 2>&1)
  if grep -q "Cannot complete Allocation" <<<"$out" && ! grep -q "tot_recv_msgs=[1-9]" <<<"$out"; then
    return 0
  fi
  REASON="a wrong credential was accepted: $(tail -2 <<<"$out" | tr '\n' ' ')"
  return 1
}
case_wrong_password() { refused -u alice -w not-the-password; }
case_wrong_secret() { refused -W not-the-secret; }

coturn_cases() {
  selected coturn || return 0
  if ! command -v turnutils_uclient >/dev/null; then
    FAILED=$((FAILED + 1)); echo "FAIL coturn: turnutils_* not installed (run scripts/setup)"; return
  fi
  coturn_setup || { FAILED=$((FAILED + 1)); echo "FAIL coturn: tern did not start"; return; }
  local c
  for c in stun_ipv4 stun_ipv6 udp_channel_rest udp_send_rest tcp_channel_rest tcp_send_rest \
           udp_channel_static tcp_send_static wrong_password wrong_secret; do
    selected "coturn-${c//_/-}" && run_case "coturn-${c//_/-}" "case_$c"
  done
  stop_tern
}

# `cargo run --release` with no config: serves on 3478 at once and prints a
# working credential; loopback peers stay denied by default.
case_default_config() {
  "$TERN_BIN" >"$WORK/default.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  local deadline=$((SECONDS + 15))
  until grep -q "tern serving" "$WORK/default.log"; do
    if ! kill -0 "$pid" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
      REASON="did not start: $(tail -3 "$WORK/default.log" | tr '\n' ' ')"; return 1
    fi
    sleep 0.1
  done
  local user pass out ok=0
  user=$(grep -o 'username [^ ]*' "$WORK/default.log" | head -1 | cut -d' ' -f2)
  pass=$(grep -o 'password [^ ]*' "$WORK/default.log" | head -1 | cut -d' ' -f2)
  if ! grep -q '"turn:.*:3478?transport=udp"' "$WORK/default.log"; then
    REASON="no iceServers printed"; ok=1
  elif ! timeout 10 turnutils_stunclient -p 3478 127.0.0.1 2>&1 | grep -q "UDP reflexive addr"; then
    REASON="no Binding answer on 3478"; ok=1
  else
    # The printed credential allocates; the loopback peer is then refused.
    out=$(timeout 8 turnutils_uclient -s -n 2 -m 1 -l 100 -e 127.0.0.1 -r 9 -u "$user" -w "$pass" 127.0.0.1 2>&1)
    if ! grep -q "create permission error 403" <<<"$out"; then
      REASON="expected allocation then 403 for a loopback peer: $(tail -2 <<<"$out" | tr '\n' ' ')"; ok=1
    fi
  fi
  # SIGINT stops at once; SIGTERM would drain the allocation just made.
  kill -INT "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
  return $ok
}

default_config_cases() {
  selected default-config && run_case default-config case_default_config
}
