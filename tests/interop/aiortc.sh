# Interop cases with aiortc and aioice (PyPI), in the venv scripts/setup made.

VENV_PY="$ROOT/.venv/bin/python"

aiortc_start() { # NAME EXTRA_CONFIG
  AIO_PORT=$(free_port)
  AIO_ADMIN=$(free_port)
  start_tern "$1" "$(loopback_config "$AIO_PORT" aiortc-secret "$AIO_ADMIN" "$2")" || return 1
  mint_credential "$1" aiortc
  AIO_USER=$CRED_USER
  AIO_PASS=$CRED_PASS
}

aio_run() { # ARGS...: run the Python case with a time bound
  local out
  out=$(timeout 120 "$VENV_PY" "$ROOT/tests/interop/aiortc_case.py" "$@" 2>&1)
  local rc=$?
  [ $rc -eq 0 ] && return 0
  REASON="$(tail -1 <<<"$out")"
  [ $rc -eq 124 ] && REASON="timed out after 120 s"
  return 1
}

case_pc_udp() { aio_run pc 127.0.0.1 "$AIO_PORT" udp "$AIO_USER" "$AIO_PASS"; }
case_pc_tcp() { aio_run pc 127.0.0.1 "$AIO_PORT" tcp "$AIO_USER" "$AIO_PASS"; }
# After aioice closes its endpoint, its deleting Refresh must have removed
# the allocation: every allocation created is also closed (counters tern
# publishes once a second).
allocations_gone() {
  local deadline=$((SECONDS + 5)) page created closed
  while [ $SECONDS -lt $deadline ]; do
    page=$(curl -fsS "http://127.0.0.1:$AIO_ADMIN/metrics")
    created=$(awk '/^tern_allocations_created_total\{/ {s += $2} END {print s + 0}' <<<"$page")
    closed=$(awk '/^tern_allocation_duration_seconds_count / {print $2}' <<<"$page")
    [ "$created" -gt 0 ] && [ "$created" = "$closed" ] && return 0
    sleep 0.2
  done
  REASON="allocation not deleted: $created created, ${closed:-0} closed"
  return 1
}
case_turn_udp() { aio_run turn 127.0.0.1 "$AIO_PORT" udp "$AIO_USER" "$AIO_PASS" "$AIO_PEER" && allocations_gone; }
case_turn_tcp() { aio_run turn 127.0.0.1 "$AIO_PORT" tcp "$AIO_USER" "$AIO_PASS" "$AIO_PEER" && allocations_gone; }
case_wrong_credential() {
  if aio_run turn 127.0.0.1 "$AIO_PORT" udp "$AIO_USER" "not-the-password" "$AIO_PEER"; then
    REASON="a wrong password relayed"; return 1
  fi
  REASON=""
}

aiortc_cases() {
  selected aiortc || selected aioice || return 0
  if [ ! -x "$VENV_PY" ] || ! "$VENV_PY" -c 'import aiortc' 2>/dev/null; then
    FAILED=$((FAILED + 1)); echo "FAIL aiortc: not installed in .venv (run scripts/setup)"; return
  fi
  # Relay-to-relay needs no [peers] allow: both peers are tern relays.
  if aiortc_start aiortc ""; then
    selected aiortc-pc-udp && run_case aiortc-pc-udp case_pc_udp
    selected aiortc-pc-tcp && run_case aiortc-pc-tcp case_pc_tcp
    stop_tern
  else
    FAILED=$((FAILED + 1)); echo "FAIL aiortc: tern did not start"
  fi
  AIO_PEER=$(free_port)
  turnutils_peer -L 127.0.0.1 -p "$AIO_PEER" >"$WORK/aio-peer.log" 2>&1 &
  PIDS+=("$!")
  if aiortc_start aioice "[peers]
allow = [\"127.0.0.1/32\"]"; then
    selected aioice-turn-udp && run_case aioice-turn-udp case_turn_udp
    selected aioice-turn-tcp && run_case aioice-turn-tcp case_turn_tcp
    selected aioice-wrong-credential && run_case aioice-wrong-credential case_wrong_credential
    stop_tern
  else
    FAILED=$((FAILED + 1)); echo "FAIL aioice: tern did not start"
  fi
}
