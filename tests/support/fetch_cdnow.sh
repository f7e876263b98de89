#!/usr/bin/env bash
# Fetch the CDNOW sample the predictive-trait tests (src/traits/predict) fit against.
#
# The data ships inside the `lifetimes` Python package (MIT-licensed code;
# the CDNOW data's own licence is unstated, so it is not committed here).
# This downloads the lifetimes 0.11.3 wheel with pip (no dependencies) and
# extracts the two summary CSVs into DIR:
#
#   DIR/cdnow_customers_summary.csv                    (ID,frequency,recency,T)
#   DIR/cdnow_customers_summary_with_transactions.csv  (ID,x,t_x,T,zbar)
#
# Usage:  tests/support/fetch_cdnow.sh DIR   (./test.sh does it, into target/cdnow)
# Then:   TRELLIS_CDNOW_SUMMARY=DIR/cdnow_customers_summary.csv cargo test
# The Python is $TRELLIS_TEST_PYTHON (test.sh's virtual environment, which has pip), else
# python3. Nothing is fetched when both files are there already.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 DIR" >&2
    exit 2
fi
dest=$1
mkdir -p "$dest"
python=${TRELLIS_TEST_PYTHON:-python3}
if [[ -s "$dest/cdnow_customers_summary.csv" && -s "$dest/cdnow_customers_summary_with_transactions.csv" ]]; then
    exit 0
fi

wheel_dir=$(mktemp -d)
trap 'rm -rf "$wheel_dir"' EXIT

"$python" -m pip download --quiet --no-deps --only-binary=:all: \
    -d "$wheel_dir" lifetimes==0.11.3

wheel=$(find "$wheel_dir" -maxdepth 1 -iname 'lifetimes-0.11.3-*.whl' | head -n 1)
if [[ -z "$wheel" ]]; then
    echo "error: pip did not produce a lifetimes 0.11.3 wheel" >&2
    exit 1
fi

# A wheel is a zip file; use Python's zipfile so `unzip` need not be installed.
"$python" - "$wheel" "$dest" <<'PY'
import sys, zipfile, pathlib
wheel, dest = sys.argv[1], pathlib.Path(sys.argv[2])
names = ["cdnow_customers_summary.csv", "cdnow_customers_summary_with_transactions.csv"]
with zipfile.ZipFile(wheel) as z:
    for name in names:
        (dest / name).write_bytes(z.read("lifetimes/datasets/" + name))
PY

echo "wrote $dest/cdnow_customers_summary.csv"
echo "wrote $dest/cdnow_customers_summary_with_transactions.csv"
echo "export TRELLIS_CDNOW_SUMMARY=$(cd "$dest" && pwd)/cdnow_customers_summary.csv"
