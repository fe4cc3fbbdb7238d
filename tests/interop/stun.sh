# Plain STUN clients: Debian's `stun` (RFC 3489, package stun-client),
# PyPI's pystun3 (RFC 3489) and aioice's STUN codec (RFC 8489) must each
# learn their own mapped address from tern.

stun_start() {
  STUN_PORT=$(free_port)
  start_tern stun "$(loopback_config "$STUN_PORT" stun-secret 0)"
}

case_stun_debian() {
  local out
  out=$(timeout 30 stun -v "127.0.0.1:$STUN_PORT" 2>&1)
  grep -q "MappedAddress = 127.0.0.1:[0-9]" <<<"$out" && return 0
  REASON="no mapped address: $(tail -2 <<<"$out" | tr '\n' ' ')"
  return 1
}

case_stun_pystun3() {
  REASON=$(timeout 30 "$ROOT/.venv/bin/python" - "$STUN_PORT" <<'PY' 2>&1
import socket, sys, stun
stun._initialize()  # get_ip_info does this; we run only its first test
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
s.settimeout(5)
r = stun.stun_test(s, "127.0.0.1", int(sys.argv[1]), *s.getsockname())
want = s.getsockname()
got = (r.get("ExternalIP"), r.get("ExternalPort"))
if got != want:
    print(f"mapped address {got}, expected {want}")
PY
)
  [ -z "$REASON" ]
}

case_stun_aioice() {
  REASON=$(timeout 30 "$ROOT/.venv/bin/python" - "$STUN_PORT" <<'PY' 2>&1
import socket, sys
from aioice import stun
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
s.settimeout(5)
req = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
req.add_fingerprint()
s.sendto(bytes(req), ("127.0.0.1", int(sys.argv[1])))
res = stun.parse_message(s.recv(1500))
got = res.attributes.get("XOR-MAPPED-ADDRESS")
if res.transaction_id != req.transaction_id or got != s.getsockname():
    print(f"mapped address {got}, expected {s.getsockname()}")
PY
)
  [ -z "$REASON" ]
}

# stun-only = true with no [auth]: coturn's STUN client gets its mapped
# address over UDP and TCP; its TURN client is refused at once (400 "STUN
# only", not a timeout) and nothing is allocated.
stun_only_start() {
  STUN_ONLY_PORT=$(free_port)
  STUN_ONLY_ADMIN=$(free_port)
  start_tern stun-only "stun-only = true
[listen]
udp = [\"127.0.0.1:$STUN_ONLY_PORT\"]
tcp = [\"127.0.0.1:$STUN_ONLY_PORT\"]
[relay]
address-ipv4 = \"127.0.0.1\"
address-ipv6 = \"none\"
[admin]
listen = \"127.0.0.1:$STUN_ONLY_ADMIN\""
}

case_stun_only_stunclient() {
  local out
  out=$(timeout 10 turnutils_stunclient -p "$STUN_ONLY_PORT" 127.0.0.1 2>&1)
  grep -q "UDP reflexive addr: 127.0.0.1:" <<<"$out" ||
    { REASON="no mapped address: $(tail -2 <<<"$out" | tr '\n' ' ')"; return 1; }
  out=$(timeout 10 "$ROOT/.venv/bin/python" "$ROOT/tests/interop/proxy_binding.py" 127.0.0.1 127.0.0.1 "$STUN_ONLY_PORT" 2>&1)
  [[ $out == mapped=127.0.0.1:* ]] || { REASON="no mapped address over TCP: $out"; return 1; }
}

case_stun_only_uclient() {
  local out started=$SECONDS
  out=$(timeout 30 turnutils_uclient -n 5 -m 1 -l 170 -e 127.0.0.1 -r 9 -p "$STUN_ONLY_PORT" \
        -u alice -w wonderland 127.0.0.1 2>&1)
  grep -q "error 400 (STUN only)" <<<"$out" ||
    { REASON="no 400 STUN only: $(grep -i error <<<"$out" | tail -2 | tr '\n' ' ')"; return 1; }
  [ $((SECONDS - started)) -lt 10 ] || { REASON="uclient took $((SECONDS - started)) s to give up"; return 1; }
  curl -fsS "http://127.0.0.1:$STUN_ONLY_ADMIN/metrics" | grep -qE '^tern_allocations_created_total\{transport="udp"\} 0$' ||
    { REASON="an allocation was created"; return 1; }
}

stun_cases() {
  selected stun || return 0
  stun_start || { FAILED=$((FAILED + 1)); echo "FAIL stun: tern did not start"; return; }
  selected stun-debian && run_case stun-debian case_stun_debian
  selected stun-pystun3 && run_case stun-pystun3 case_stun_pystun3
  selected stun-aioice && run_case stun-aioice case_stun_aioice
  stop_tern
  selected stun-only || return 0
  stun_only_start || { FAILED=$((FAILED + 1)); echo "FAIL stun-only: tern did not start"; return; }
  selected stun-only-stunclient && run_case stun-only-stunclient case_stun_only_stunclient
  selected stun-only-uclient && run_case stun-only-uclient case_stun_only_uclient
  stop_tern
}
