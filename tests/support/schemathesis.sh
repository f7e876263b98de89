#!/usr/bin/env bash
# Holds a real `trellis serve` to its OpenAPI document with schemathesis.
#
#   tests/support/schemathesis.sh path/to/trellis
#
# Starts the binary on a fresh SQLite file in a temporary folder, on a free loopback port,
# with a random 32-character API token, the repository's workflows/ and templates/, and the
# outbox in the temporary folder; waits for /healthz; then runs schemathesis (`st`, or
# `schemathesis`, from PATH: `pip install schemathesis`) against /v1/openapi.json with the
# token (and, for the inbound SMS webhook, its Basic credentials). Every response must be no 5xx and match the document's statuses, content types and
# schemas. Exits non-zero on any failure; the server is stopped and the folder removed on
# exit. Environment: ST_MAX_EXAMPLES (default 100) cases per operation, ST_SEED for a
# reproducible run, ST_EXTRA for more schemathesis flags.
set -euo pipefail

if [[ $# -ne 1 || ! -x $1 ]]; then
    echo "usage: $0 PATH_TO_TRELLIS_BINARY" >&2
    exit 2
fi
binary=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)

if command -v st >/dev/null 2>&1; then
    st=(st)
elif command -v schemathesis >/dev/null 2>&1; then
    st=(schemathesis)
else
    echo "schemathesis is not on PATH: pip install schemathesis (in a venv) and put its bin/ first" >&2
    exit 2
fi
if command -v python3 >/dev/null 2>&1; then python=python3; else python=python; fi

# Settings the caller's environment might hold must not reach the server.
while IFS= read -r name; do unset "$name"; done < <(compgen -e | grep '^TRELLIS_' || true)

work=$(mktemp -d "${TMPDIR:-/tmp}/trellis-schemathesis.XXXXXX")
server=""
cleanup() {
    local status=$?
    if [[ -n $server ]] && kill -0 "$server" 2>/dev/null; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    if [[ $status -ne 0 && -f $work/server.log ]]; then
        echo "--- last lines of the server's log ---" >&2
        tail -n 40 "$work/server.log" >&2 || true
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
token=$("$python" -c 'import secrets; print(secrets.token_hex(16))')
base="http://127.0.0.1:$port"

"$binary" serve \
    --database-url "sqlite://$work/trellis.db" \
    --listen "127.0.0.1:$port" \
    --api-token "$token" \
    --public-url "$base" \
    --workflows "$root/workflows" \
    --templates "$root/templates" \
    --outbox "$work/outbox" \
    >"$work/server.log" 2>&1 &
server=$!

for _ in $(seq 1 300); do
    if curl -fsS -o /dev/null "$base/healthz" 2>/dev/null; then
        break
    fi
    if ! kill -0 "$server" 2>/dev/null; then
        echo "trellis serve exited before answering /healthz" >&2
        exit 1
    fi
    sleep 0.1
done
curl -fsS -o /dev/null "$base/healthz" || {
    echo "trellis serve did not answer /healthz within 30 s" >&2
    exit 1
}

# Run from the temporary folder so that no report or example database lands in the tree
# and no stray schemathesis.toml is read.
cd "$work"
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance
# One worker: with two, hypothesis parses lambda sources with `ast.parse` from two threads
# at once, which CPython 3.11 before 3.11.8 can fail with "SystemError: AST constructor
# recursion depth mismatch" (python/cpython#106905) — an error of the test tool, not of
# Trellis, seen once on this machine.
run() {
    # shellcheck disable=SC2086 # ST_EXTRA is split into flags on purpose.
    "${st[@]}" run "$base/v1/openapi.json" \
        --checks "$checks" \
        --phases examples,coverage,fuzzing \
        --max-examples "${ST_MAX_EXAMPLES:-100}" \
        --workers 1 \
        --request-timeout 20 \
        --generation-database none \
        --no-color \
        ${ST_SEED:+--seed "$ST_SEED"} \
        ${ST_EXTRA:-} \
        "$@"
}
failed=0
echo "== every operation but the inbound SMS webhook, with the bearer token"
run --header "Authorization: Bearer $token" --exclude-path /sms/inbound || failed=1
echo "== the inbound SMS webhook, with its Basic credentials"
run --auth "twilio:$token" --include-path /sms/inbound || failed=1
exit "$failed"
