#!/usr/bin/env bash
# End-to-end cost of DPoP through a built Caddy: wrk against two sites of one
# Caddy process, alternated ROUNDS times (each first in turn):
#   d  oauth_bearer with dpop (token cached; a fresh ES256 proof per request) -> reverse_proxy
#   b  request_header Authorization static                                     -> reverse_proxy
# and the ratio d/b of the median throughputs; and Caddy's CPU time per request in each
# (from /proc: what a busy machine does not distort). Everything listens on
# 127.0.0.1 and is stopped on exit. Needs wrk and curl.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROUNDS=${ROUNDS:-8}
DURATION=${DURATION:-2}
CONNS=${CONNS:-32}
THREADS=${THREADS:-1}
DPOP_KEY=${DPOP_KEY:-} # a PEM file (Ed25519, RSA...); default: the generated P-256 key
PROFILE=${PROFILE:-} # seconds: after the rounds, a CPU profile of Caddy under the dpop load, $BENCH_OUT/dpop.pprof
CADDY_BIN=${CADDY_BIN:-} # a Caddy built before (another commit's, to compare); default: make build, ./caddy
BENCH_OUT=${BENCH_OUT:-$(mktemp -d /tmp/oauth-bearer-dpop.XXXXXX)}
mkdir -p "$BENCH_OUT/wrk"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

if [[ -n "$CADDY_BIN" ]]; then
	echo "cpus: $(nproc), load before: $(cut -d' ' -f1-3 /proc/loadavg), caddy $CADDY_BIN"
else
	echo "cpus: $(nproc), load before: $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD)"
	make build >/dev/null
	CADDY_BIN=./caddy
fi
go build -o "$BENCH_OUT/oauthbench" ./bench/cmd/oauthbench
ob="$BENCH_OUT/oauthbench"
static="static-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
"$ob" serve -ports-file "$BENCH_OUT/ports" -static-token "$static" -token-delay 0s >"$BENCH_OUT/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do [[ -s "$BENCH_OUT/ports" ]] && break; sleep 0.1; done
read -r T U <"$BENCH_OUT/ports"
read -r D B A <<<"$("$ob" freeports 3 | tr '\n' ' ')"
admin="admin off"
[[ -n "$PROFILE" ]] && admin="admin 127.0.0.1:$A" # for /debug/pprof only
keyline=""
[[ -n "$DPOP_KEY" ]] && keyline="dpop_key $DPOP_KEY"
cat >"$BENCH_OUT/Caddyfile" <<CF
{
	$admin
	auto_https off
	persist_config off
	storage file_system $BENCH_OUT/storage
}
http://127.0.0.1:$D {
	bind 127.0.0.1
	oauth_bearer {
		token_url http://127.0.0.1:$T/oauth/token
		client_id dpop
		client_secret bench-secret
		dpop http://127.0.0.1:$U
		$keyline
	}
	reverse_proxy 127.0.0.1:$U
}
http://127.0.0.1:$B {
	bind 127.0.0.1
	request_header Authorization "Bearer $static"
	reverse_proxy 127.0.0.1:$U
}
CF
XDG_CONFIG_HOME="$BENCH_OUT" XDG_DATA_HOME="$BENCH_OUT" "$CADDY_BIN" run --config "$BENCH_OUT/Caddyfile" --adapter caddyfile >"$BENCH_OUT/caddy.log" 2>&1 &
pids+=($!)
caddypid=$!
# caddycpu is Caddy's CPU time so far (user and system, every thread), in
# clock ticks: per request, it does not count the time Caddy waited for a
# core, so it can be compared on a busy machine where req/s cannot.
caddycpu() { awk '{print $14 + $15}' "/proc/$caddypid/stat"; }
tick=$(getconf CLK_TCK)
for _ in $(seq 1 100); do curl -s -o /dev/null "http://127.0.0.1:$B/" && break; sleep 0.2; done
for p in "$D" "$B"; do
	code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p/api") || true
	[[ "$code" == 200 ]] || fail "GET :$p/api answered $code ($(tail -3 "$BENCH_OUT/caddy.log"))"
done
for p in "$D" "$B"; do wrk -t"$THREADS" -c"$CONNS" -d2s "http://127.0.0.1:$p/api" >/dev/null; done
declare -A port=([d]=$D [b]=$B)
for round in $(seq 1 "$ROUNDS"); do
	order="d b"; ((round % 2 == 0)) && order="b d"
	for cfg in $order; do
		cpu0=$(caddycpu)
		wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:${port[$cfg]}/api" >"$BENCH_OUT/wrk/$round-$cfg.txt"
		cpu1=$(caddycpu)
		rps=$(sed -n 's/^Requests\/sec:[[:space:]]*//p' "$BENCH_OUT/wrk/$round-$cfg.txt")
		reqs=$(awk '/requests in/ {print $1}' "$BENCH_OUT/wrk/$round-$cfg.txt")
		cpureq=$(awk -v c=$((cpu1 - cpu0)) -v t="$tick" -v n="$reqs" 'BEGIN {printf "%.1f", c / t * 1e6 / n}')
		non2xx=$(sed -n 's/^[[:space:]]*Non-2xx or 3xx responses:[[:space:]]*//p' "$BENCH_OUT/wrk/$round-$cfg.txt")
		echo "round $round $cfg: $rps req/s, Caddy $cpureq µs CPU per request${non2xx:+, $non2xx non-2xx}"
		[[ -z "$non2xx" ]] || fail "$cfg answered $non2xx non-2xx responses"
		echo "$rps" >>"$BENCH_OUT/$cfg.rps"
		echo "$cpureq" >>"$BENCH_OUT/$cfg.cpu"
	done
done
med() { sort -n "$1" | awk '{v[NR]=$1} END {print (NR%2 ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2)}'; }
md=$(med "$BENCH_OUT/d.rps"); mb=$(med "$BENCH_OUT/b.rps")
echo "median req/s: dpop $md, static header $mb, ratio $(awk -v a="$md" -v b="$mb" 'BEGIN {printf "%.3f", a/b}')"
cpud=$(med "$BENCH_OUT/d.cpu"); cpub=$(med "$BENCH_OUT/b.cpu")
echo "median Caddy CPU per request: dpop $cpud µs, static header $cpub µs, ratio static/dpop $(awk -v a="$cpub" -v b="$cpud" 'BEGIN {printf "%.3f", a/b}') (the throughput ratio where Caddy's CPU is the limit)"
if [[ -n "$PROFILE" ]]; then
	wrk -t"$THREADS" -c"$CONNS" -d"$((PROFILE + 1))s" "http://127.0.0.1:$D/api" >"$BENCH_OUT/wrk/profile-d.txt" &
	wrkpid=$!
	curl -s -o "$BENCH_OUT/dpop.pprof" "http://127.0.0.1:$A/debug/pprof/profile?seconds=$PROFILE"
	wait "$wrkpid"
	echo "CPU profile of Caddy under the dpop load: $BENCH_OUT/dpop.pprof (go tool pprof -top $CADDY_BIN $BENCH_OUT/dpop.pprof)"
fi
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg); results in $BENCH_OUT"
