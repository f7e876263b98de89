#!/usr/bin/env bash
# The reliability suite at soak sizes, in release mode: the kill -9 loop with 10,000 customers
# and 20 kills, every crash point, the fault tests, the promise tests at ten times their CI
# size, and 10^6 fuzz inputs per target. Prints one line per promise (P1–P6 of the README's
# Guarantees) and one for hostile input, each with its figures, then exits non-zero if any
# test failed. Takes about half an hour on a 2-core machine; RELIABILITY.md keeps the last
# figures.
#
#   ./soak.sh                  # everything
#   TRELLIS_FUZZ_CASES=100000 ./soak.sh   # a shorter fuzz
#   ./soak.sh --from LOG       # only the summary of an earlier run's log
set -uo pipefail
cd "$(dirname "$0")"

if [ "${1:-}" = "--from" ]; then
  log=${2:-}
  if [ -z "$log" ] || [ ! -r "$log" ]; then
    echo "soak: no log to read: '${log}' (./soak.sh --from LOG)" >&2
    exit 2
  fi
  status=0
  grep -qE "^test result: FAILED|^error: test failed" "$log" && status=1
else
  export TRELLIS_SOAK=1
  export TRELLIS_FUZZ_CASES="${TRELLIS_FUZZ_CASES:-1000000}"
  log="$(mktemp "${TMPDIR:-/tmp}/trellis-soak.XXXXXX")"
  echo "== soak: $(git rev-parse --short HEAD 2>/dev/null || echo '?') on $(date -u +%Y-%m-%dT%H:%MZ), log in $log"
  ./test.sh --release -- --nocapture --test-threads 1 \
    crash:: faults:: delivery_faults:: clock_jumps:: promises:: hostile:: fuzz:: \
    > "$log" 2>&1
  status=$?
fi

# One line per promise: the figures its tests printed ("RELIABILITY …", which --nocapture may
# put after the test's name on the same line).
line() {
  local label=$1 pattern=$2
  local figures
  figures=$(grep -oE "RELIABILITY .*" "$log" | sed 's/^RELIABILITY //' | grep -E "$pattern" | paste -sd ';' - | sed 's/;/; /g')
  printf '%s: %s\n' "$label" "${figures:-no figure printed (test missing or failed)}"
}
echo
line "P1 nothing accepted or due is lost" "kill -9|crash point|disk full|locked|SIGTERM|clock jumps"
line "P2 one row per send, duplicates only on the wire" "kill -9|RFC 1047|crash point after_send"
line "P3 nothing after an opt-out" "^P3"
line "P4 SMS only inside the local window" "^P4"
line "P5 one customer's nodes in order" "^P5|clock jumps"
line "P6 no data without a valid token" "auth_matrix|forged_tokens|secret_canaries"
line "hostile input: no panic, no 5xx, nothing written" "^(fuzz|malformed|raw_http|webhook_ssrf|webhook_from_data|injection|paths)"
echo
passed=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /^passed/) n += $i } END { print n + 0 }' "$log")
failed=$(awk '/^test result:/ { for (i = 1; i < NF; i++) if ($(i + 1) ~ /^failed/) n += $i } END { print n + 0 }' "$log")
echo "soak: ${passed:-0} passed, ${failed:-0} failed"
if [ "$status" -ne 0 ]; then
  grep -E "panicked|FAILED" "$log" | head -20
fi
exit "$status"
