# Interop cases for the PROXY protocol: a real HAProxy (mode tcp) in front of
# tern's TCP and TLS listeners, sending v2 (send-proxy-v2) or v1
# (send-proxy) headers; TLS passes through HAProxy to tern. tern trusts
# HAProxy's address, 127.0.0.1; clients connect from 127.0.0.2, so an answer
# or log naming 127.0.0.2 shows tern mapped the client's own address.

PROXY_SECRET="interop-proxy-secret"
CLIENT_IP=127.0.0.2

proxy_setup() {
  make_pki || return 1
  cp "$WORK/tls/leaf1.pem" "$WORK/proxy-cert.pem" && cp "$WORK/tls/leaf1.key" "$WORK/proxy-key.pem"
  PX_TCP=$(free_port); PX_TLS=$(free_port); PX_ADMIN=$(free_port); PX_PEER=$(free_port)
  HA_TCP2=$(free_port); HA_TCP1=$(free_port); HA_TLS2=$(free_port); HA_TLS1=$(free_port)
  turnutils_peer -L 127.0.0.1 -p "$PX_PEER" >"$WORK/proxy-peer.log" 2>&1 &
  PIDS+=("$!")
  start_tern proxy "[listen]
udp = []
tcp = [\"127.0.0.1:$PX_TCP\"]
tls = [\"127.0.0.1:$PX_TLS\"]
proxy-protocol-from = [\"127.0.0.1/32\"]
[tls]
certificate-file = \"$WORK/proxy-cert.pem\"
private-key-file = \"$WORK/proxy-key.pem\"
[relay]
address-ipv4 = \"127.0.0.1\"
address-ipv6 = \"none\"
[auth]
secrets = [\"$PROXY_SECRET\"]
[allocations]
legacy-channel-numbers = true
[peers]
allow = [\"127.0.0.1/32\"]
[admin]
listen = \"127.0.0.1:$PX_ADMIN\"" || return 1
  cat >"$WORK/haproxy.cfg" <<EOF
global
  maxconn 1000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend tcp_v2
  bind 127.0.0.1:$HA_TCP2
  default_backend tern_tcp_v2
backend tern_tcp_v2
  # A health check that asks tern for a STUN Binding (behind a v2 LOCAL
  # header) and expects a success response: a plain connect check closes
  # as soon as the connection is up, often before its header is sent.
  option tcp-check
  tcp-check send-binary 000100002112a442$(printf '%024x' 0)
  tcp-check expect rbinary ^0101[0-9A-Fa-f]{4}2112[Aa]442
  server tern 127.0.0.1:$PX_TCP send-proxy-v2 source 127.0.0.1 check check-send-proxy inter 300ms
frontend tcp_v1
  bind 127.0.0.1:$HA_TCP1
  default_backend tern_tcp_v1
backend tern_tcp_v1
  server tern 127.0.0.1:$PX_TCP send-proxy source 127.0.0.1
frontend tls_v2
  bind 127.0.0.1:$HA_TLS2
  default_backend tern_tls_v2
backend tern_tls_v2
  server tern 127.0.0.1:$PX_TLS send-proxy-v2 source 127.0.0.1
frontend tls_v1
  bind 127.0.0.1:$HA_TLS1
  default_backend tern_tls_v1
backend tern_tls_v1
  server tern 127.0.0.1:$PX_TLS send-proxy source 127.0.0.1
EOF
  haproxy -f "$WORK/haproxy.cfg" -db >"$WORK/haproxy.log" 2>&1 &
  HA_PID=$!
  PIDS+=("$HA_PID")
  local p deadline=$((SECONDS + 10))
  for p in "$HA_TCP2" "$HA_TCP1" "$HA_TLS2" "$HA_TLS1"; do
    until (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; do
      if ! kill -0 "$HA_PID" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
        echo "haproxy did not start:"; cat "$WORK/haproxy.log"; return 1
      fi
      sleep 0.1
    done
  done
}

# px_binding SOURCE PORT [CA]: prints what proxy_binding.py saw.
px_binding() {
  timeout 20 "$ROOT/.venv/bin/python" "$ROOT/tests/interop/proxy_binding.py" "$1" 127.0.0.1 "$2" ${3:+"$3"} 2>&1
}

px_metric() {
  curl -fsS "http://127.0.0.1:$PX_ADMIN/metrics" | awk -v m="$1" '$1 == m {print $2}'
}

# px_mapped PORT [CA]: a Binding request from 127.0.0.2 through HAProxy is
# answered with 127.0.0.2 and the client's own port.
px_mapped() {
  local out own
  out=$(px_binding "$CLIENT_IP" "$@")
  own=${out##*own=}
  [[ $out == "mapped=$own own=$own" && $own == "$CLIENT_IP:"* ]] && return 0
  REASON="binding through haproxy: $out"
  return 1
}

# px_uclient PORT ARGS...: 3 clients x 50 packets from 127.0.0.2 through
# HAProxy; every packet must come back and tern must log 127.0.0.2 as the
# client of an allocation over TRANSPORT ($PX_TRANSPORT).
px_uclient() {
  local port=$1 out totals sent recv logged
  shift
  logged=$(px_logged)
  out=$(timeout 60 turnutils_uclient -n 50 -m 3 -l 170 -L "$CLIENT_IP" -e 127.0.0.1 -r "$PX_PEER" \
        -p "$port" -W "$PROXY_SECRET" "$@" 127.0.0.1 2>&1)
  totals=$(grep -E 'start_mclient: tot_send_msgs=[0-9]+, tot_recv_msgs=[0-9]+$' <<<"$out" | tail -1)
  sent=$(sed -E 's/.*tot_send_msgs=([0-9]+).*/\1/' <<<"$totals")
  recv=$(sed -E 's/.*tot_recv_msgs=([0-9]+).*/\1/' <<<"$totals")
  if [ -z "$totals" ] || [ "$sent" -lt 150 ] || [ "$sent" != "$recv" ]; then
    REASON="uclient through haproxy: $(grep -E 'tot_send_msgs|ERROR|error' <<<"$out" | tail -3 | tr '\n' ' ')"
    return 1
  fi
  [ "$(px_logged)" -ge $((logged + 3)) ] ||
    { REASON="$((logged - $(px_logged))) $PX_TRANSPORT allocations logged for client $CLIENT_IP, not 3"; return 1; }
}

# px_logged: allocations tern logged for $CLIENT_IP over $PX_TRANSPORT.
px_logged() {
  grep -E "allocation created.* client=$CLIENT_IP:[0-9]+ transport=$PX_TRANSPORT " "$WORK/proxy.log" | wc -l
}

case_proxy_haproxy_v2_tcp() { px_mapped "$HA_TCP2" && PX_TRANSPORT=Tcp px_uclient "$HA_TCP2" -t; }
case_proxy_haproxy_v1_tcp() { px_mapped "$HA_TCP1" && PX_TRANSPORT=Tcp px_uclient "$HA_TCP1" -t; }
case_proxy_haproxy_v2_tls() {
  px_mapped "$HA_TLS2" "$WORK/tls/ca.pem" && PX_TRANSPORT=Tls px_uclient "$HA_TLS2" -t -S
}
case_proxy_haproxy_v1_tls() {
  px_mapped "$HA_TLS1" "$WORK/tls/ca.pem" && PX_TRANSPORT=Tls px_uclient "$HA_TLS1" -t -S
}

# HAProxy's health checks (check-send-proxy: a v2 LOCAL header, then a
# STUN Binding) are read as headers and served as the proxy's own
# connections, not refused, and HAProxy never marks tern down.
case_proxy_haproxy_health_check() {
  local before deadline=$((SECONDS + 30))
  before=$(px_metric tern_proxy_protocol_headers_total)
  until [ "$(px_metric tern_proxy_protocol_headers_total)" -ge $((before + 2)) ]; do
    [ $SECONDS -ge $deadline ] && { REASON="no health-check headers read"; return 1; }
    sleep 0.2
  done
  [ "$(px_metric 'tern_proxy_protocol_refused_total{reason="invalid"}')" = 0 ] ||
    { REASON="health checks were refused as invalid"; return 1; }
  ! grep -E "tern_tcp_v2/tern is DOWN|Health check for server" "$WORK/haproxy.log" ||
    { REASON="haproxy's health check failed (haproxy.log above)"; return 1; }
}

# Straight to tern from HAProxy's (trusted) address, without a header: the
# connection is refused and counted; from elsewhere it is served.
case_proxy_no_header_refused() {
  local before after out
  before=$(px_metric 'tern_proxy_protocol_refused_total{reason="missing"}')
  out=$(px_binding 127.0.0.1 "$PX_TCP")
  [ "$out" = closed ] || { REASON="a trusted source without a header was served: $out"; return 1; }
  out=$(px_binding 127.0.0.1 "$PX_TLS" "$WORK/tls/ca.pem")
  [ "$out" = closed ] || { REASON="a trusted source without a header was served over TLS: $out"; return 1; }
  after=$(px_metric 'tern_proxy_protocol_refused_total{reason="missing"}')
  [ "$((after - before))" = 2 ] || { REASON="refusals counted: $before -> $after"; return 1; }
  out=$(px_binding "$CLIENT_IP" "$PX_TCP")
  [[ $out == "mapped=$CLIENT_IP:"* ]] || { REASON="a direct client was not served: $out"; return 1; }
}

proxy_cases() {
  selected proxy || return 0
  if ! command -v haproxy >/dev/null || ! command -v turnutils_uclient >/dev/null; then
    FAILED=$((FAILED + 1)); echo "FAIL proxy: haproxy or turnutils_uclient not installed (run scripts/setup)"; return
  fi
  proxy_setup || { FAILED=$((FAILED + 1)); echo "FAIL proxy: tern or haproxy did not start"; return; }
  local c
  for c in proxy_haproxy_v2_tcp proxy_haproxy_v1_tcp proxy_haproxy_v2_tls proxy_haproxy_v1_tls \
           proxy_haproxy_health_check proxy_no_header_refused; do
    selected "${c//_/-}" && run_case "${c//_/-}" "case_$c"
  done
  kill "$HA_PID" 2>/dev/null; wait "$HA_PID" 2>/dev/null
  stop_tern
}
