# The admin API as an operator drives it: curl (401 without or with a wrong
# token), and a relaying turnutils_uclient of user alice that is listed,
# stops relaying within a second of `tern ctl disconnect`, and whose next
# run is refused (403) until the block is lifted.

admin_setup() {
  AD_PORT=$(free_port); AD_ADMIN=$(free_port); AD_PEER=$(free_port); AD_API=$(free_port)
  AD_KEY=$(openssl rand -hex 24)
  openssl rand -hex 32 >"$WORK/admin-tokens"
  AD_TOKEN=$(cat "$WORK/admin-tokens")
  turnutils_peer -L 127.0.0.1 -p "$AD_PEER" >"$WORK/admin-peer.log" 2>&1 &
  PIDS+=("$!")
  start_tern admin "$(loopback_config "$AD_PORT" admin-secret "$AD_ADMIN" "token-file = \"$WORK/admin-tokens\"
[records]
file = \"$WORK/records.jsonl\"
[[auth.users]]
name = \"alice\"
password = \"wonderland\"
[allocations]
legacy-channel-numbers = true
[peers]
allow = [\"127.0.0.1/32\"]
[api]
listen = \"127.0.0.1:$AD_API\"
keys = [\"$AD_KEY\"]")"
}

ad_curl() { curl -s -o /dev/null -w '%{http_code}' "$@" "http://127.0.0.1:$AD_ADMIN/v1/info"; }

case_admin_curl_auth() {
  local c
  c=$(ad_curl) && [ "$c" = 401 ] || { REASON="no token: HTTP $c"; return 1; }
  c=$(ad_curl -H "Authorization: Bearer not-the-token-at-all") && [ "$c" = 401 ] || { REASON="wrong token: HTTP $c"; return 1; }
  c=$(ad_curl -H "Authorization: Bearer $AD_TOKEN") && [ "$c" = 200 ] || { REASON="right token: HTTP $c"; return 1; }
  curl -fsS "http://127.0.0.1:$AD_ADMIN/metrics" >/dev/null || { REASON="/metrics needs no token"; return 1; }
}

ad_ctl() { "$TERN_BIN" ctl --admin "127.0.0.1:$AD_ADMIN" --token-file "$WORK/admin-tokens" "$@"; }

case_admin_disconnect() {
  # A long run: 1 client, 600 packets 50 ms apart (30 s).
  timeout 60 turnutils_uclient -n 600 -m 1 -l 120 -z 50 -e 127.0.0.1 -r "$AD_PEER" -u alice -w wonderland \
    -p "$AD_PORT" 127.0.0.1 >"$WORK/admin-uc.log" 2>&1 &
  local uc=$! deadline=$((SECONDS + 15)) json relayed before after
  until json=$(ad_ctl --json sessions --user alice) && [ "$(jq_len "$json")" -ge 1 ]; do
    [ $SECONDS -ge $deadline ] && { REASON="alice's allocation was never listed"; kill $uc; return 1; }
    sleep 0.2
  done
  # Relaying, by the session's own counter.
  deadline=$((SECONDS + 10))
  until [ "$(ad_sum "$(ad_ctl --json sessions --user alice)" packets_to_client)" -gt 5 ]; do
    [ $SECONDS -ge $deadline ] && { REASON="alice's session relays nothing: $(ad_ctl sessions)"; kill $uc; return 1; }
    sleep 0.2
  done
  relayed=$(ad_field "$json" relay)
  ad_ctl disconnect alice --block-seconds 120 >/dev/null || { REASON="disconnect failed"; kill $uc; return 1; }
  # At once no session is left; once the counters are published (every
  # second), tern's relayed-packet count stands still while uclient sends on.
  [ "$(jq_len "$(ad_ctl --json sessions --user alice)")" = 0 ] || { REASON="alice still listed"; kill $uc; return 1; }
  sleep 1.5
  before=$(relayed_total)
  sleep 1.5
  after=$(relayed_total)
  kill $uc 2>/dev/null; wait $uc 2>/dev/null
  [ "$before" = "$after" ] || { REASON="relayed packets went on after disconnect: $before -> $after (relay $relayed)"; return 1; }
  # Blocked: a new run cannot allocate.
  local out
  out=$(timeout 20 turnutils_uclient -n 5 -m 1 -l 120 -e 127.0.0.1 -r "$AD_PEER" -u alice -w wonderland -p "$AD_PORT" 127.0.0.1 2>&1)
  grep -q "error 403" <<<"$out" || { REASON="a blocked alice was not refused with 403: $(grep -i error <<<"$out" | tail -1)"; return 1; }
  ad_ctl blocks | grep -q "^alice " || { REASON="the block is not listed"; return 1; }
  ad_ctl unblock alice >/dev/null || { REASON="unblock failed"; return 1; }
  out=$(timeout 30 turnutils_uclient -n 20 -m 1 -l 120 -e 127.0.0.1 -r "$AD_PEER" -u alice -w wonderland -p "$AD_PORT" 127.0.0.1 2>&1)
  grep -qE 'tot_recv_msgs=[1-9]' <<<"$out" || { REASON="after unblock alice does not relay: $(tail -2 <<<"$out" | tr '\n' ' ')"; return 1; }
}

# Three uclient runs over TCP (their allocations end with the connection):
# the records written meanwhile sum to the change of tern's relayed-bytes
# metric, and carry reason connection_closed.
case_admin_records() {
  local before lines_before after i sum deadline
  sleep 1.2  # let the counters of earlier cases be published
  before=$(relayed_bytes)
  lines_before=$(wc -l <"$WORK/records.jsonl")
  for i in 1 2 3; do
    timeout 60 turnutils_uclient -t -n 30 -m 2 -l 170 -e 127.0.0.1 -r "$AD_PEER" -W admin-secret \
      -p "$AD_PORT" 127.0.0.1 >"$WORK/records-uc$i.log" 2>&1 || { REASON="uclient run $i failed"; return 1; }
  done
  deadline=$((SECONDS + 10))
  while :; do
    after=$(relayed_bytes)
    sum=$(tail -n +"$((lines_before + 1))" "$WORK/records.jsonl" | python3 -c '
import json, sys
print(sum(r["bytes_to_peer"] + r["bytes_to_client"] for r in map(json.loads, sys.stdin)))')
    [ "$sum" -gt 0 ] && [ "$sum" = "$((after - before))" ] && break
    [ $SECONDS -ge $deadline ] && { REASON="records sum $sum, metric change $((after - before))"; return 1; }
    sleep 0.3
  done
  tail -n +"$((lines_before + 1))" "$WORK/records.jsonl" | grep -q '"reason":"connection_closed"' ||
    { REASON="no connection_closed record"; return 1; }
}

relayed_bytes() {
  curl -fsS "http://127.0.0.1:$AD_ADMIN/metrics" |
    awk 'index($0, "tern_relayed_bytes_total{") == 1 {s += $2} END {printf "%d\n", s}'
}

jq_len() { python3 -c 'import json,sys; print(len(json.loads(sys.argv[1])))' "$1"; }
ad_sum() { python3 -c 'import json,sys; print(sum(x[sys.argv[2]] for x in json.loads(sys.argv[1])))' "$1" "$2"; }
# The TURN REST API draft's GET on the credential endpoint, as a client
# that speaks it would: its username and password, given to
# turnutils_uclient as -u/-w, relay every packet; a wrong key gets 401.
case_admin_api_draft_uclient() {
  local json user pass out totals code
  json=$(curl -fsS "http://127.0.0.1:$AD_API/?service=turn&username=carol&key=$AD_KEY") ||
    { REASON="the draft GET failed"; return 1; }
  user=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["username"])' <<<"$json")
  pass=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["password"])' <<<"$json")
  [[ $user == *:carol ]] || { REASON="username $user"; return 1; }
  out=$(timeout 30 turnutils_uclient -n 20 -m 2 -l 120 -e 127.0.0.1 -r "$AD_PEER" -u "$user" -w "$pass" \
        -p "$AD_PORT" 127.0.0.1 2>&1)
  totals=$(grep -E 'start_mclient: tot_send_msgs=[0-9]+, tot_recv_msgs=[0-9]+$' <<<"$out" | tail -1)
  [[ $totals =~ tot_send_msgs=([0-9]+),\ tot_recv_msgs=([0-9]+)$ ]] &&
    [ "${BASH_REMATCH[1]}" -ge 40 ] && [ "${BASH_REMATCH[1]}" = "${BASH_REMATCH[2]}" ] ||
    { REASON="uclient with the draft's credential: ${totals:-$(grep -i error <<<"$out" | tail -1)}"; return 1; }
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$AD_API/?service=turn&username=carol&key=not-$AD_KEY")
  [ "$code" = 401 ] || { REASON="a wrong key got $code"; return 1; }
  # uclient leaves its UDP allocations to expire; end them here.
  ad_ctl disconnect carol >/dev/null
}

# Last (it ends this tern): `tern ctl drain --wait` while a TCP uclient
# relays: readiness drops at once, a new client's Allocate is refused with
# 508, the live run relays every packet, and ctl returns once tern, its
# last allocation gone, has exited 0.
case_admin_ctl_drain() {
  # Earlier cases' uclient runs leave UDP allocations to expire; end them,
  # so that the drain ends with the live run, not at its timeout (30 s).
  ad_ctl disconnect alice >/dev/null || { REASON="disconnect failed"; return 1; }
  local started=$SECONDS
  timeout 60 turnutils_uclient -t -n 60 -m 1 -l 120 -z 50 -e 127.0.0.1 -r "$AD_PEER" -u alice -w wonderland \
    -p "$AD_PORT" 127.0.0.1 >"$WORK/admin-drain-uc.log" 2>&1 &
  local uc=$! deadline=$((SECONDS + 15)) out code rc
  until [ "$(jq_len "$(ad_ctl --json sessions --user alice)")" -ge 1 ]; do
    [ $SECONDS -ge $deadline ] && { REASON="alice's allocation was never listed"; kill $uc; return 1; }
    sleep 0.2
  done
  timeout 60 "$TERN_BIN" ctl --admin "127.0.0.1:$AD_ADMIN" --token-file "$WORK/admin-tokens" drain --wait \
    >"$WORK/admin-drain.log" 2>&1 &
  local ctl=$!
  deadline=$((SECONDS + 5))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$AD_ADMIN/readyz")" = 503 ]; do
    [ $SECONDS -ge $deadline ] && { REASON="/readyz did not turn 503"; kill $uc $ctl; return 1; }
    sleep 0.1
  done
  out=$(timeout 20 turnutils_uclient -n 5 -m 1 -l 120 -e 127.0.0.1 -r "$AD_PEER" -u alice -w wonderland -p "$AD_PORT" 127.0.0.1 2>&1)
  grep -q "error 508" <<<"$out" || { REASON="a new Allocate while draining: $(grep -i error <<<"$out" | tail -1)"; kill $uc $ctl; return 1; }
  wait $uc
  local totals
  totals=$(grep -E 'start_mclient: tot_send_msgs=[0-9]+, tot_recv_msgs=[0-9]+$' "$WORK/admin-drain-uc.log" | tail -1)
  [[ $totals =~ tot_send_msgs=([0-9]+),\ tot_recv_msgs=([0-9]+)$ ]] &&
    [ "${BASH_REMATCH[1]}" -ge 60 ] && [ "${BASH_REMATCH[1]}" = "${BASH_REMATCH[2]}" ] ||
    { REASON="the live run lost packets: ${totals:-no totals}"; kill $ctl; return 1; }
  wait $ctl; rc=$?
  [ $rc = 0 ] && grep -q "drained: tern has exited" "$WORK/admin-drain.log" ||
    { REASON="tern ctl drain --wait: rc $rc, $(tr '\n' ' ' <"$WORK/admin-drain.log")"; return 1; }
  wait "$TERN_PID"; code=$?
  [ $code = 0 ] || { REASON="tern exited $code after the drain"; return 1; }
  [ $((SECONDS - started)) -lt 25 ] ||
    { REASON="tern exited at the drain timeout, not when its last allocation ended"; return 1; }
}

ad_field() { python3 -c 'import json,sys; v=json.loads(sys.argv[1]); print(v[0][sys.argv[2]] if v else 0)' "$1" "$2"; }
relayed_total() {
  curl -fsS "http://127.0.0.1:$AD_ADMIN/metrics" |
    awk 'index($0, "tern_relayed_packets_total{") == 1 {s += $2} END {print s + 0}'
}

admin_cases() {
  selected admin || return 0
  admin_setup || { FAILED=$((FAILED + 1)); echo "FAIL admin: tern did not start"; return; }
  local c
  for c in admin_curl_auth admin_disconnect admin_records admin_api_draft_uclient admin_ctl_drain; do
    selected "${c//_/-}" && run_case "${c//_/-}" "case_$c"
  done
  stop_tern
}
