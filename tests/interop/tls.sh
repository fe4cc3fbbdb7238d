# Interop cases for TURN over TLS: coturn's turnutils_uclient -S (which does
# not verify certificates) and openssl s_client (which does, against a
# throw-away CA made here), against a tls listener and a shared tcp+tls port.

TLS_SECRET="interop-tls-secret"

# make_leaf N DAYS: a certificate for localhost/127.0.0.1 signed by the test
# CA, serial 0x100N, in $WORK/tls/leafN.{pem,key}.
make_leaf() {
  local d=$WORK/tls
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$d/leaf$1.key" \
    -out "$d/leaf$1.csr" -subj /CN=localhost >/dev/null 2>&1 &&
  openssl x509 -req -in "$d/leaf$1.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -set_serial "0x100$1" \
    -days "$2" -out "$d/leaf$1.pem" -extfile "$d/san.ext" >/dev/null 2>&1
}

# make_pki: the test CA and two leaves in $WORK/tls, once.
make_pki() {
  [ -f "$WORK/tls/leaf2.pem" ] && return 0
  mkdir -p "$WORK/tls"
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$WORK/tls/san.ext"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$WORK/tls/ca.key" \
    -out "$WORK/tls/ca.pem" -days 2 -subj "/CN=tern interop CA" >/dev/null 2>&1 || return 1
  make_leaf 1 30 && make_leaf 2 60
}

tls_setup() {
  make_pki || return 1
  cp "$WORK/tls/leaf1.pem" "$WORK/tls/cert.pem" && cp "$WORK/tls/leaf1.key" "$WORK/tls/key.pem"
  TLS_PORT=$(free_port)
  SHARED_PORT=$(free_port)
  TLS_ADMIN=$(free_port)
  TLS_PEER=$(free_port)
  turnutils_peer -L 127.0.0.1 -p "$TLS_PEER" >"$WORK/tls-peer.log" 2>&1 &
  PIDS+=("$!")
  start_tern tls "host = \"localhost\"
[listen]
udp = []
tcp = [\"127.0.0.1:$SHARED_PORT\"]
tls = [\"127.0.0.1:$TLS_PORT\", \"127.0.0.1:$SHARED_PORT\"]
[tls]
certificate-file = \"$WORK/tls/cert.pem\"
private-key-file = \"$WORK/tls/key.pem\"
[relay]
address-ipv4 = \"127.0.0.1\"
address-ipv6 = \"none\"
[auth]
secrets = [\"$TLS_SECRET\"]
[[auth.users]]
name = \"alice\"
password = \"wonderland\"
[allocations]
legacy-channel-numbers = true
[peers]
allow = [\"127.0.0.1/32\"]
[admin]
listen = \"127.0.0.1:$TLS_ADMIN\""
}

# tls_uclient PORT ARGS...: 5 clients x 50 packets through tern; every
# packet must come back.
tls_uclient() {
  local port=$1 out totals sent recv
  shift
  out=$(timeout 60 turnutils_uclient -n 50 -m 5 -l 170 -e 127.0.0.1 -r "$TLS_PEER" -p "$port" "$@" 127.0.0.1 2>&1)
  totals=$(grep -E 'start_mclient: tot_send_msgs=[0-9]+, tot_recv_msgs=[0-9]+$' <<<"$out" | tail -1)
  sent=$(sed -E 's/.*tot_send_msgs=([0-9]+).*/\1/' <<<"$totals")
  recv=$(sed -E 's/.*tot_recv_msgs=([0-9]+).*/\1/' <<<"$totals")
  if [ -n "$totals" ] && [ "$sent" -ge 250 ] && [ "$sent" = "$recv" ]; then return 0; fi
  REASON="$(grep -E 'tot_send_msgs|lost packets|ERROR|error' <<<"$out" | tail -3 | tr '\n' ' ')"
  return 1
}

# tls_relayed DIRECTION: tern's relayed-packet count for TLS clients in
# that direction (client_to_peer or peer_to_client).
tls_relayed() {
  curl -fsS "http://127.0.0.1:$TLS_ADMIN/metrics" |
    awk -v d="direction=\"$1\"" 'index($0, "tern_relayed_packets_total{") == 1 && index($0, d) && index($0, "transport=\"tls\"") {s += $2} END {print s + 0}'
}

# relayed_over TRANSPORT: tern counted relayed packets with that label.
relayed_over() {
  curl -fsS "http://127.0.0.1:$TLS_ADMIN/metrics" |
    awk -v t="transport=\"$1\"" 'index($0, "tern_relayed_packets_total{") == 1 && index($0, t) {s += $2} END {exit !(s > 0)}'
}

case_tls_channel_rest() { tls_uclient "$TLS_PORT" -t -S -W "$TLS_SECRET" && relayed_over tls; }
case_tls_send_static() { tls_uclient "$TLS_PORT" -t -S -s -u alice -w wonderland; }
case_tls_shared_port_tls() { tls_uclient "$SHARED_PORT" -t -S -W "$TLS_SECRET"; }
case_tls_shared_port_tcp() { tls_uclient "$SHARED_PORT" -t -W "$TLS_SECRET" && relayed_over tcp; }

# s_client ARGS...: one verified handshake; prints what openssl said.
s_client() {
  echo | timeout 10 openssl s_client -connect "127.0.0.1:$TLS_PORT" -servername localhost \
    -CAfile "$WORK/tls/ca.pem" -verify_return_error "$@" 2>&1
}

case_tls_alpn() {
  local out
  out=$(s_client -alpn stun.turn)
  grep -q "ALPN protocol: stun.turn" <<<"$out" || { REASON="stun.turn not selected"; return 1; }
  out=$(s_client -alpn stun.nat-discovery)
  grep -q "ALPN protocol: stun.nat-discovery" <<<"$out" || { REASON="stun.nat-discovery not selected"; return 1; }
  out=$(s_client -alpn h2)
  grep -q "no application protocol" <<<"$out" || { REASON="-alpn h2 did not get the alert: $(tail -2 <<<"$out")"; return 1; }
  out=$(s_client)
  grep -q "Verify return code: 0 (ok)" <<<"$out" || { REASON="no ALPN was not served: $(tail -2 <<<"$out")"; return 1; }
  out=$(s_client -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0')
  grep -q "Cipher is (NONE)\|alert protocol version\|no protocols available" <<<"$out" || { REASON="TLS 1.1 was accepted"; return 1; }
}

serial_now() { s_client -showcerts | openssl x509 -noout -serial 2>/dev/null | cut -d= -f2; }

# A uclient run keeps relaying across a certificate swap and SIGHUP; new
# handshakes get the new certificate; a broken file keeps the one in use.
case_tls_reload() {
  local before after expiry1 expiry2 uc rc up0 down0
  before=$(serial_now)
  up0=$(tls_relayed client_to_peer); down0=$(tls_relayed peer_to_client)
  [ "$before" = 1001 ] || { REASON="serial before reload: $before"; return 1; }
  expiry1=$(curl -fsS "http://127.0.0.1:$TLS_ADMIN/metrics" | awk '/^tern_tls_certificate_expiry_timestamp_seconds / {print $2}')
  timeout 90 turnutils_uclient -n 400 -m 3 -l 170 -e 127.0.0.1 -r "$TLS_PEER" -p "$TLS_PORT" -t -S \
    -W "$TLS_SECRET" 127.0.0.1 >"$WORK/tls-reload-uc.log" 2>&1 &
  uc=$!
  # Swap once its allocations are live.
  local deadline=$((SECONDS + 20))
  until curl -fsS "http://127.0.0.1:$TLS_ADMIN/metrics" 2>/dev/null | grep -qE '^tern_allocations\{family="ipv4",transport="tls"\} [1-9]'; do
    [ $SECONDS -ge $deadline ] && { REASON="uclient allocated nothing: $(curl -fsS "http://127.0.0.1:$TLS_ADMIN/metrics" | grep '^tern_allocations{' | tr '\n' ' ')"; kill $uc; return 1; }
    sleep 0.1
  done
  cp "$WORK/tls/leaf2.pem" "$WORK/tls/cert.pem" && cp "$WORK/tls/leaf2.key" "$WORK/tls/key.pem"
  kill -HUP "$TERN_PID"
  deadline=$((SECONDS + 10))
  until [ "$(serial_now)" = 1002 ]; do
    [ $SECONDS -ge $deadline ] && { REASON="new handshakes still get serial $(serial_now)"; kill $uc; return 1; }
    sleep 0.2
  done
  expiry2=$(curl -fsS "http://127.0.0.1:$TLS_ADMIN/metrics" | awk '/^tern_tls_certificate_expiry_timestamp_seconds / {print $2}')
  python3 -c "import sys; sys.exit(not float('$expiry2') > float('$expiry1') + 20 * 86400)" ||
    { REASON="expiry gauge $expiry1 -> $expiry2"; kill $uc; return 1; }
  # A key that is not the certificate's: the running pair stays.
  cp "$WORK/tls/leaf1.key" "$WORK/tls/key.pem"
  kill -HUP "$TERN_PID"
  deadline=$((SECONDS + 10))
  until grep -q "is not the key of the certificate" "$WORK/tls.log"; do
    [ $SECONDS -ge $deadline ] && { REASON="no error logged for a mismatched key"; kill $uc; return 1; }
    sleep 0.1
  done
  [ "$(serial_now)" = 1002 ] || { REASON="a broken pair replaced the running one"; kill $uc; return 1; }
  wait $uc; rc=$?
  local totals sent recv
  totals=$(grep -E 'start_mclient: tot_send_msgs=[0-9]+, tot_recv_msgs=[0-9]+$' "$WORK/tls-reload-uc.log" | tail -1)
  sent=$(sed -E 's/.*tot_send_msgs=([0-9]+).*/\1/' <<<"$totals")
  recv=$(sed -E 's/.*tot_recv_msgs=([0-9]+).*/\1/' <<<"$totals")
  if [ $rc -ne 0 ] || [ -z "$totals" ] || [ "$sent" -lt 1200 ]; then
    REASON="uclient across the reload: rc=$rc $totals"; return 1
  fi
  # The TLS connections outlive both reloads: every message the clients
  # sent reached tern and left for the peer, and every echo tern relayed
  # back reached the clients. The UDP echo leg through turnutils_peer (one
  # recvfrom per datagram, default buffers) may lose a datagram on a loaded
  # 2-core machine; that is not the TLS path, so it may cost at most 1 %.
  # Workers publish their counters once a second: wait for this run's.
  local up down
  deadline=$((SECONDS + 5))
  while up=$(( $(tls_relayed client_to_peer) - up0 )); down=$(( $(tls_relayed peer_to_client) - down0 ));
        [ "$up" -lt "$sent" ] || [ "$down" -lt "$recv" ]; do
    [ $SECONDS -ge $deadline ] && break
    sleep 0.2
  done
  if [ "$up" != "$sent" ] || [ "$down" != "$recv" ] || [ $((recv * 100)) -lt $((sent * 99)) ]; then
    REASON="uclient across the reload: $totals; tern relayed $up to the peer and $down back"; return 1
  fi
  # Put the good pair back for later cases.
  cp "$WORK/tls/leaf2.key" "$WORK/tls/key.pem"
}

# aioice's TURN client and two relay-only aiortc peer connections over
# turns:, verifying the certificate for localhost against the test CA.
tls_aio() { # MODE [PEER_PORT]
  mint_credential tls aiortc
  local out rc
  out=$(SSL_CERT_FILE="${TRUST:-$WORK/tls/ca.pem}" timeout 120 "$ROOT/.venv/bin/python" "$ROOT/tests/interop/aiortc_case.py" \
        "$1" localhost "$TLS_PORT" tls "$CRED_USER" "$CRED_PASS" ${2:+"$2"} 2>&1)
  rc=$?
  [ $rc -eq 0 ] && return 0
  REASON="$(tail -1 <<<"$out")"
  return 1
}
case_tls_aioice() { tls_aio turn "$TLS_PEER"; }
case_tls_aiortc_pc() { tls_aio pc; }
# Trusting something else than the test CA, the handshake must fail.
case_tls_aioice_untrusted() {
  if TRUST="$WORK/tls/leaf2.pem" tls_aio turn "$TLS_PEER"; then
    REASON="relayed without trusting the certificate"; return 1
  fi
  if ! grep -qi "certificate.verify.failed" <<<"$REASON"; then
    REASON="failed, but not on verification: $REASON"; return 1
  fi
  REASON=""
}

# Headless Chromium, relay-only, over turns:localhost: with the
# certificate's SPKI pinned it relays (relayProtocol "tls"); without the
# pin it gets no relay candidate.
chromium_tls() { # MODE [SPKI]
  local dir="$ROOT/tests/interop/browser" out rc
  if [ -z "${TLS_WEB:-}" ]; then
    TLS_WEB=$(free_port)
    python3 -m http.server --bind 127.0.0.1 --directory "$dir" "$TLS_WEB" >"$WORK/tls-web.log" 2>&1 &
    PIDS+=("$!")
    local deadline=$((SECONDS + 10))
    until curl -fs "http://127.0.0.1:$TLS_WEB/index.html" >/dev/null || [ $SECONDS -ge $deadline ]; do sleep 0.1; done
  fi
  mint_credential tls browser
  out=$(cd "$dir" && CHROMIUM_SPKI="${2:-}" timeout 120 node run.mjs "http://localhost:$TLS_WEB/index.html" \
        "turns:localhost:$TLS_PORT?transport=tcp" "$CRED_USER" "$CRED_PASS" "$1" 2>&1)
  rc=$?
  echo "  $(tail -1 <<<"$out")"
  [ $rc -eq 0 ] && return 0
  REASON="$(tail -1 <<<"$out")"
  return 1
}
spki() {
  openssl x509 -in "$WORK/tls/cert.pem" -pubkey -noout | openssl pkey -pubin -outform der |
    openssl dgst -sha256 -binary | base64
}
case_tls_chromium() { chromium_tls tls "$(spki)"; }
case_tls_chromium_unpinned() { chromium_tls no-relay; }

tls_cases() {
  selected tls || return 0
  if ! command -v turnutils_uclient >/dev/null || ! command -v openssl >/dev/null; then
    FAILED=$((FAILED + 1)); echo "FAIL tls: turnutils_uclient or openssl not installed (run scripts/setup)"; return
  fi
  tls_setup || { FAILED=$((FAILED + 1)); echo "FAIL tls: tern did not start"; return; }
  local c
  for c in tls_channel_rest tls_send_static tls_shared_port_tls tls_shared_port_tcp tls_alpn \
           tls_aioice tls_aioice_untrusted tls_aiortc_pc tls_chromium tls_chromium_unpinned tls_reload; do
    selected "${c//_/-}" && run_case "${c//_/-}" "case_$c"
  done
  stop_tern
}
