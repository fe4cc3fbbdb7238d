# Interop cases with headless Chromium (Debian's package) driven by
# playwright-core: relay-only peer connections through tern.

BROWSER_DIR="$ROOT/tests/interop/browser"

browser_case() { # TRANSPORT [MODE] [PASSWORD]
  local out
  out=$(cd "$BROWSER_DIR" && timeout 120 node run.mjs "http://localhost:$WEB_PORT/index.html" \
        "turn:127.0.0.1:$BR_PORT?transport=$1" "$BR_USER" "${3:-$BR_PASS}" "${2:-normal}" 2>&1)
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

browser_cases() {
  selected chromium || return 0
  if ! command -v chromium >/dev/null || [ ! -d "$BROWSER_DIR/node_modules/playwright-core" ]; then
    FAILED=$((FAILED + 1)); echo "FAIL chromium: chromium or playwright-core missing (run scripts/setup)"; return
  fi
  WEB_PORT=$(free_port)
  python3 -m http.server --bind 127.0.0.1 --directory "$BROWSER_DIR" "$WEB_PORT" >"$WORK/web.log" 2>&1 &
  PIDS+=("$!")
  BR_PORT=$(free_port)
  if ! start_tern chromium "$(loopback_config "$BR_PORT" browser-secret 0)"; then
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
  stop_tern
}
