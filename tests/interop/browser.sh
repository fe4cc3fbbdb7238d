# Interop cases with headless Chromium (Debian's package) driven by
# playwright-core: relay-only peer connections through tern.

BROWSER_DIR="$ROOT/tests/interop/browser"

browser_case() { # TRANSPORT [MODE] [PASSWORD]
  browser_run "http://localhost:$WEB_PORT/index.html" "turn:127.0.0.1:$BR_PORT?transport=$1" \
    "$BR_USER" "${3:-$BR_PASS}" "${2:-normal}"
}

browser_run() { # PAGE_URL TURN_URL USERNAME CREDENTIAL MODE
  local out
  out=$(cd "$BROWSER_DIR" && timeout 120 node run.mjs "$@" 2>&1)
  local rc=$?
  # The page's verdict, e.g. {"ok":true,"pairA":["relay","relay"],"framesDecoded":[31,92]}.
  echo "  $(tail -1 <<<"$out")"
  [ $rc -eq 0 ] && return 0
  REASON="$(tail -1 <<<"$out")"
  [ $rc -eq 124 ] && REASON="timed out after 120 s"
  return 1
}
case_chromium_udp() { browser_case udp; }
case_chromium_tcp() { browser_case tcp; }
case_chromium_wrong_credential() { browser_case udp wrong not-the-password; }
# The page asks tern's credential endpoint (another origin: CORS) for its
# iceServers and passes them to RTCPeerConnection as they are.
case_chromium_api() {
  browser_run "http://localhost:$WEB_PORT/index.html" "http://127.0.0.1:$BR_API/v1/ice-servers" "" "$BR_KEY" api
}
# The same page from an origin not in allowed-origins cannot read an answer.
case_chromium_api_refused_origin() {
  browser_run "http://127.0.0.1:$WEB_PORT/index.html" "http://127.0.0.1:$BR_API/v1/ice-servers" "" "$BR_KEY" api-refused
}

browser_cases() {
  selected chromium || return 0
  if ! command -v chromium >/dev/null || [ ! -d "$BROWSER_DIR/node_modules/playwright-core" ]; then
    FAILED=$((FAILED + 1)); echo "FAIL chromium: chromium or playwright-core missing (run scripts/setup)"; return
  fi
  WEB_PORT=$(free_port)
  python3 -m http.server --bind 127.0.0.1 --directory "$BROWSER_DIR" "$WEB_PORT" >"$WORK/web.log" 2>&1 &
  PIDS+=("$!")
  BR_PORT=$(free_port)
  BR_API=$(free_port)
  BR_KEY=browser-api-key-0123456789
  local api
  api=$(printf '[api]\nlisten = "127.0.0.1:%s"\nkeys = ["%s"]\nallowed-origins = ["http://localhost:%s"]\n' \
    "$BR_API" "$BR_KEY" "$WEB_PORT")
  if ! start_tern chromium "$(loopback_config "$BR_PORT" browser-secret 0 "$api")"; then
    FAILED=$((FAILED + 1)); echo "FAIL chromium: tern did not start"; return
  fi
  mint_credential chromium browser
  BR_USER=$CRED_USER
  BR_PASS=$CRED_PASS
  local deadline=$((SECONDS + 10))
  until curl -fs "http://127.0.0.1:$WEB_PORT/index.html" >/dev/null || [ $SECONDS -ge $deadline ]; do sleep 0.1; done
  selected chromium-udp && run_case chromium-udp case_chromium_udp
  selected chromium-tcp && run_case chromium-tcp case_chromium_tcp
  selected chromium-wrong-credential && run_case chromium-wrong-credential case_chromium_wrong_credential
  selected chromium-api && run_case chromium-api case_chromium_api
  selected chromium-api-refused-origin && run_case chromium-api-refused-origin case_chromium_api_refused_origin
  stop_tern
}
