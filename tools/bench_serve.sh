#!/usr/bin/env bash
# Load test of `alexnet serve` on loopback, beside its ceiling and beside what a
# Python user would stand up instead, in one run on this machine:
#
#   - the paper's `alexnet` (random weights: one SGD step from the paper's
#     initialisation, on a throw-away 1000-class dataset of one photo);
#   - a 500x375 JPEG of quality 90 (from crates/alexnet-data/tests/photos/coffee.png);
#   - wrk (Debian's `wrk`), one connection per client, at 1, 8 and 64 clients,
#     SECONDS seconds each: images/s and p50/p99 latency;
#   - the ceiling: `alexnet bench`'s batch-64 inference rate with the measured
#     time to prepare the photo added per image, 1 / (1/rate + prepare);
#   - the baseline: the same checkpoint exported to ONNX under onnxruntime
#     (THREADS threads) behind one uvicorn worker running tools/serve_baseline.py.
#
#   bash tools/bench_serve.sh            # THREADS=2 SECONDS=10 by default
#
# Everything runs on this machine's cores, the load generator included.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${THREADS:-2}
seconds=${SECONDS_EACH:-10}
work=${WORK:-target/bench-serve}
mkdir -p "$work"
alexnet=target/release/alexnet
command -v wrk > /dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
cargo build --release -q -p alexnet-cli

if [ ! -x "$work/venv/bin/python" ]; then
    python3 -m venv "$work/venv"
    "$work/venv/bin/pip" install -q -r tools/bench_serve_requirements.txt
fi
python="$work/venv/bin/python"
photo="$work/photo.jpg"
"$python" tools/serve_baseline.py photo crates/alexnet-data/tests/photos/coffee.png "$photo"
echo "photo: $(stat -c %s "$photo") bytes, 500x375"

checkpoint="$work/alexnet.safetensors"
if [ ! -f "$checkpoint" ]; then
    rm -rf "$work/classes" "$work/data" "$work/run"
    for c in $(seq -w 0 999); do
        mkdir -p "$work/classes/c$c"
        ln -s "$(realpath "$photo")" "$work/classes/c$c/photo.jpg"
    done
    "$alexnet" prepare "$work/classes" --out "$work/data" --size 256 > /dev/null
    "$alexnet" train --data "$work/data" --arch alexnet --max-steps 1 --batch 8 --holdout 8 \
        --quiet --out "$work/run" > /dev/null
    cp "$work/run/last.safetensors" "$checkpoint"
fi
"$alexnet" export onnx "$checkpoint" --out "$work/alexnet.onnx" > /dev/null

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() {
    for _ in $(seq 600); do
        curl -sf "$1" > /dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "$1 never answered" >&2
    return 1
}
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "image/jpeg"
local file = io.open("$photo", "rb")
wrk.body = file:read("*all")
file:close()
LUA
# One load: prints "images/s p50_ms p99_ms errors".
load() {
    local url=$1 clients=$2
    wrk -t1 -c"$clients" -d"${seconds}s" --timeout 30s --latency -s "$work/post.lua" "$url" > "$work/wrk.txt"
    "$python" - "$work/wrk.txt" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(value):
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s|m)", value).groups()
    return float(number) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]
rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p50 = ms(re.search(r"\s50%\s+(\S+)", text).group(1))
p99 = ms(re.search(r"\s99%\s+(\S+)", text).group(1))
errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", text))
errors += sum(int(n) for n in re.findall(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)[0]) if "Socket errors" in text else 0
print(f"{rate:.1f} {p50:.1f} {p99:.1f} {errors}")
PY
}

echo "== ceiling (alexnet bench, $threads threads)"
"$alexnet" bench --arch alexnet --threads "$threads" --infer-batch 64 --train-batch 8 --layer-steps 0 \
    --seconds 5 --photo "$photo" --json > "$work/bench.json"
read -r rate prepare_ms ceiling < <("$python" -c '
import json, sys
r = json.load(open(sys.argv[1]))
rate, prepare = r["inference"]["images_per_s"], r["photo"]["ms_per_image"]
print(f"{rate:.1f} {prepare:.2f} {1 / (1 / rate + prepare / 1e3):.1f}")' "$work/bench.json")
echo "inference at batch 64: $rate images/s; preparing the photo: $prepare_ms ms; ceiling: $ceiling images/s"

# The server on $port under 1, 8 and 64 clients: a result line each, named $1
# (described as $2 in the log).
load_each() {
    for clients in 1 8 64; do
        echo "== $2, $clients clients"
        results+=("$1 $clients $(load "http://127.0.0.1:$port/v1/classify" "$clients")")
        echo "${results[-1]}"
    done
}

results=()
port=$(free_port)
"$alexnet" serve --checkpoint "$checkpoint" --addr "127.0.0.1:$port" --threads "$threads" \
    --max-batch 64 --max-delay-ms 5 ${SERVE_FLAGS:-} > "$work/serve.log" 2>&1 &
server=$!
trap 'kill $server 2> /dev/null || true' EXIT
wait_for "http://127.0.0.1:$port/readyz"
load_each "alexnet-serve" "alexnet serve"
curl -s "http://127.0.0.1:$port/metrics" > "$work/metrics.txt"
kill -TERM $server; wait $server || true

port=$(free_port)
BASELINE_MODEL="$work/alexnet.onnx" BASELINE_THREADS="$threads" \
    "$work/venv/bin/uvicorn" --app-dir tools serve_baseline:app --host 127.0.0.1 --port "$port" \
    --workers 1 --log-level warning > "$work/baseline.log" 2>&1 &
server=$!
wait_for "http://127.0.0.1:$port/healthz"
load_each "onnxruntime-fastapi" "onnxruntime + FastAPI + uvicorn"
kill -TERM $server; wait $server || true

echo
echo "$(lscpu | sed -n 's/^Model name: *//p'), $threads threads, $seconds s per load, $(date -u +%F)"
echo "ceiling: $ceiling images/s (batch-64 inference $rate images/s, preparing $prepare_ms ms per image)"
printf '%-22s %8s %10s %9s %9s %7s\n' server clients images/s p50_ms p99_ms errors
for line in "${results[@]}"; do
    # shellcheck disable=SC2086
    printf '%-22s %8s %10s %9s %9s %7s\n' $line
done
