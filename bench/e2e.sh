#!/usr/bin/env bash
# End-to-end benchmark of oauth_bearer through a built Caddy (make bench-e2e).
#
#   1. throughput and latency: wrk against three sites of one Caddy process,
#      alternated ROUNDS times, through all six orders; then a CPU profile
#      of Caddy under load for a and b:
#        a  oauth_bearer (token cached)        -> reverse_proxy
#        b  request_header Authorization static -> reverse_proxy
#        c  no header                           -> reverse_proxy
#   2. stampede: STAMPEDE_N concurrent first requests to a site whose token
#      source has no token: exactly one token request, time until all answered
#   3. rotation: tokens living 4 s (refresh_before 2s), ROTATION_RATE req/s for
#      ROTATION_SECONDS: token requests = rotations, zero errors, p99 during
#      rotations vs between them
#
# Everything listens on 127.0.0.1 and is stopped on exit. Results (wrk
# output, logs, the per-second CSV of the rotation) stay in $BENCH_OUT.
# Installs wrk and curl (Debian packages) if they are missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROUNDS=${ROUNDS:-20}                # alternations of a, b, c
DURATION=${DURATION:-2}             # seconds per wrk run: short, so that runs
                                    # compared in a round share the machine's load
PROFILE_SECONDS=${PROFILE_SECONDS:-15} # CPU profile of Caddy under load, per config
CONNS=${CONNS:-32}                  # wrk connections
THREADS=${THREADS:-1}               # wrk threads (2 cores: leave one to Caddy)
STAMPEDE_N=${STAMPEDE_N:-1000}
ROTATION_SECONDS=${ROTATION_SECONDS:-30}
ROTATION_RATE=${ROTATION_RATE:-2000} # req/s, constant (open loop)
TOKEN_DELAY=${TOKEN_DELAY:-50ms}     # how long the local token endpoint takes
# With 2 CPUs or more, Caddy runs on CADDY_CPUS (GOMAXPROCS = their number)
# and wrk, the load client, the token endpoint and the upstream on LOAD_CPUS,
# so that the load generator does not compete with what it measures.
# PIN=0 lets everything float.
if [[ "${PIN:-1}" == 1 && $(nproc) -ge 2 ]] && command -v taskset >/dev/null; then
	CADDY_CPUS=${CADDY_CPUS:-0}
	LOAD_CPUS=${LOAD_CPUS:-1-$(($(nproc) - 1))}
	# env and taskset exec the command: $! is the command's own pid.
	on_caddy=(env GOMAXPROCS="$(taskset -c "$CADDY_CPUS" nproc)" taskset -c "$CADDY_CPUS")
	on_load=(taskset -c "$LOAD_CPUS")
	pinning="caddy on CPU $CADDY_CPUS (GOMAXPROCS=$(taskset -c "$CADDY_CPUS" nproc)), load and servers on CPU $LOAD_CPUS"
else
	on_caddy=(env)
	on_load=(env)
	pinning="none"
fi
BENCH_OUT=${BENCH_OUT:-$(mktemp -d /tmp/oauth-bearer-e2e.XXXXXX)}
mkdir -p "$BENCH_OUT/wrk"

section() { printf '\n==== %s ====\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

pids=()
cleanup() {
	local pid
	for pid in "${pids[@]}"; do
		if kill -0 "$pid" 2>/dev/null; then
			kill "$pid" 2>/dev/null || true
			wait "$pid" 2>/dev/null || true
		fi
	done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

section "Environment"
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v curl >/dev/null || missing+=(curl)
if ((${#missing[@]})); then
	echo "installing the Debian packages: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
{
	echo "date:    $(date -u +%Y-%m-%dT%H:%M:%SZ)"
	echo "cpus:    $(nproc) ($(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | sort -u | head -1))"
	echo "go:      $(go version)"
	echo "wrk:     $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2)"
	echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD -- '*.go' 2>/dev/null || echo ' (with uncommitted .go changes)')"
	echo "load:    $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min, before the run)"
	echo "rounds:  $ROUNDS x ${DURATION}s per config, wrk -t$THREADS -c$CONNS"
	echo "pinning: $pinning"
} | tee "$BENCH_OUT/machine.txt"

section "Build"
make build
go build -o "$BENCH_OUT/oauthbench" ./bench/cmd/oauthbench
ob="$BENCH_OUT/oauthbench"

section "Start the token endpoint, the upstream and Caddy"
rm -f "$BENCH_OUT/ports"
static="static-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
"${on_load[@]}" "$ob" serve -ports-file "$BENCH_OUT/ports" -static-token "$static" -token-delay "$TOKEN_DELAY" \
	>"$BENCH_OUT/serve.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do [[ -s "$BENCH_OUT/ports" ]] && break; sleep 0.1; done
[[ -s "$BENCH_OUT/ports" ]] || fail "oauthbench serve did not start: $(cat "$BENCH_OUT/serve.log")"
read -r T U <"$BENCH_OUT/ports"
read -r A B C D E ADMIN <<<"$("$ob" freeports 6 | tr '\n' ' ')"
token_url="http://127.0.0.1:$T/oauth/token"

cat >"$BENCH_OUT/Caddyfile" <<EOF
{
	# The admin endpoint serves /debug/pprof for the profiles.
	admin 127.0.0.1:$ADMIN
	auto_https off
	persist_config off
	storage file_system $BENCH_OUT/storage
	grace_period 1s
}

# (a) oauth_bearer
http://127.0.0.1:$A {
	bind 127.0.0.1
	oauth_bearer {
		token_url $token_url
		client_id throughput
		client_secret bench-secret
	}
	reverse_proxy 127.0.0.1:$U
}

# (b) a static header: what the app would send if tokens never expired
http://127.0.0.1:$B {
	bind 127.0.0.1
	request_header Authorization "Bearer $static"
	reverse_proxy 127.0.0.1:$U
}

# (c) no header
http://127.0.0.1:$C {
	bind 127.0.0.1
	reverse_proxy 127.0.0.1:$U
}

# stampede: a credential set of its own, so nothing is cached when it starts;
# /warm opens the client connections without a token
http://127.0.0.1:$D {
	bind 127.0.0.1
	handle /warm {
		respond 204
	}
	handle {
		oauth_bearer {
			token_url $token_url
			client_id stampede
			client_secret bench-secret
		}
		reverse_proxy 127.0.0.1:$U
	}
}

# rotation: tokens living 4 s, replaced 2 s (+ up to 10 % jitter) before expiry
http://127.0.0.1:$E {
	bind 127.0.0.1
	oauth_bearer {
		token_url $token_url
		client_id rotation
		client_secret bench-secret
		param bench_lifetime 4
		refresh_before 2s
	}
	reverse_proxy 127.0.0.1:$U
}
EOF

XDG_CONFIG_HOME="$BENCH_OUT" XDG_DATA_HOME="$BENCH_OUT" \
	"${on_caddy[@]}" ./caddy run --config "$BENCH_OUT/Caddyfile" --adapter caddyfile >"$BENCH_OUT/caddy.log" 2>&1 &
caddy_pid=$!
pids+=("$caddy_pid")
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
up=""
for _ in $(seq 1 100); do
	kill -0 "$caddy_pid" 2>/dev/null || { tail -20 "$BENCH_OUT/caddy.log" >&2; fail "caddy exited"; }
	if listening "$A" && listening "$B" && listening "$C" && listening "$D" && listening "$E"; then up=yes; break; fi
	sleep 0.2
done
[[ -n "$up" ]] || { tail -20 "$BENCH_OUT/caddy.log" >&2; fail "caddy did not start within 20 s"; }
echo "token endpoint :$T, upstream :$U, caddy a :$A b :$B c :$C stampede :$D rotation :$E"
for p in "$A" "$B" "$C"; do
	code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$p/api") || true
	[[ "$code" == 200 ]] || fail "GET :$p/api answered $code"
done

section "1. Throughput: wrk, a/b/c alternated $ROUNDS times"
declare -A port=([a]=$A [b]=$B [c]=$C)
for cfg in a b c; do # warm-up: connections, upstream pool, GC pacing
	"${on_load[@]}" wrk -t"$THREADS" -c"$CONNS" -d2s "http://127.0.0.1:${port[$cfg]}/api" >/dev/null
done
# Every order in turn, so that each config runs first, second and third
# equally often over 6 rounds.
orders=("a b c" "b c a" "c a b" "c b a" "a c b" "b a c")
for round in $(seq 1 "$ROUNDS"); do
	for cfg in ${orders[$(((round - 1) % 6))]}; do
		f="$BENCH_OUT/wrk/$round-$cfg.txt"
		"${on_load[@]}" wrk -t"$THREADS" -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:${port[$cfg]}/api" >"$f"
		printf 'round %d %s: %s req/s, p99 %s\n' "$round" "$cfg" \
			"$(awk '/Requests\/sec/ {print $2}' "$f")" "$(awk '$1 == "99%" {print $2}' "$f")"
	done
done

section "Profiles: where Caddy's CPU goes under load, per config"
# A CPU profile of Caddy while wrk loads one config. The share of samples in
# the header handler itself (oauth_bearer, or Caddy's headers handler for
# request_header), leaving out what it calls next (reverse_proxy), is its
# cost as a fraction of the whole request: a figure that the machine's
# background load does not blur as it blurs throughput.
for cfg in a b; do
	curl -s -o "$BENCH_OUT/caddy-$cfg.pprof" \
		"http://127.0.0.1:$ADMIN/debug/pprof/profile?seconds=$PROFILE_SECONDS" &
	curl_pid=$!
	pids+=("$curl_pid")
	"${on_load[@]}" wrk -t"$THREADS" -c"$CONNS" -d"$((PROFILE_SECONDS + 2))s" "http://127.0.0.1:${port[$cfg]}/api" >/dev/null
	wait "$curl_pid" || fail "no profile from the admin endpoint"
done
share() { # share PROFILE FOCUS: percent of samples in FOCUS frames, reverse_proxy excluded
	go tool pprof -top -focus="$2" -ignore='reverseproxy' "$1" 2>/dev/null |
		sed -n 's/^Showing nodes accounting for [^,]*, \([0-9.]*\)% of .*/\1/p' | head -1
}
share_a=$(share "$BENCH_OUT/caddy-a.pprof" 'oauthbearer')
share_b=$(share "$BENCH_OUT/caddy-b.pprof" 'caddyhttp/headers')
echo "a: oauth_bearer frames ${share_a:-?}% of Caddy's CPU; b: headers handler frames ${share_b:-?}%"
go tool pprof -top -cum -focus='oauthbearer' -ignore='reverseproxy' "$BENCH_OUT/caddy-a.pprof" 2>/dev/null |
	sed -n '1,25p' >"$BENCH_OUT/caddy-a-oauthbearer-top.txt" || true

section "2. Stampede: $STAMPEDE_N concurrent first requests"
stampede_ok=yes
"${on_load[@]}" "$ob" stampede -url "http://127.0.0.1:$D/api" -warm /warm -n "$STAMPEDE_N" \
	-stats "http://127.0.0.1:$T/stats" >"$BENCH_OUT/stampede.txt" || stampede_ok=no
cat "$BENCH_OUT/stampede.txt"

section "3. Rotation: ${ROTATION_RATE} req/s for ${ROTATION_SECONDS}s, tokens living 4 s"
rotation_ok=yes
"${on_load[@]}" "$ob" rotation -url "http://127.0.0.1:$E/api" -stats "http://127.0.0.1:$T/stats" -rate "$ROTATION_RATE" \
	-duration "${ROTATION_SECONDS}s" -out "$BENCH_OUT/rotation-per-second.csv" >"$BENCH_OUT/rotation.txt" || rotation_ok=no
cat "$BENCH_OUT/rotation.txt"

# Upstream totals: no request may have carried an unknown or expired token.
curl -s "http://127.0.0.1:$T/stats" >"$BENCH_OUT/stats.json"
cleanup
pids=()

kv() { sed -n "s/^$1=//p" "$BENCH_OUT/$2"; }
section "Results ($BENCH_OUT)"
cat "$BENCH_OUT/machine.txt"
echo
"$ob" wrksum "$BENCH_OUT/wrk" | tee "$BENCH_OUT/throughput.txt"
echo
printf '%-44s %s\n' \
	"profile a: oauth_bearer's own share of CPU" "${share_a:-?}%" \
	"profile b: request_header's own share of CPU" "${share_b:-?}%" | tee -a "$BENCH_OUT/throughput.txt"
echo
printf '%-44s %s\n' \
	"stampede: concurrent first requests" "$(kv stampede_requests stampede.txt)" \
	"stampede: answered 200" "$(kv stampede_ok stampede.txt)" \
	"stampede: token requests (must be 1)" "$(kv stampede_token_requests stampede.txt)" \
	"stampede: sent before the token existed" "$(kv stampede_sent_before_token stampede.txt)" \
	"stampede: ms until all answered" "$(kv stampede_all_answered_ms stampede.txt) (token endpoint: $(kv stampede_token_request_ms stampede.txt) ms)" \
	"rotation: requests (errors)" "$(kv rotation_requests rotation.txt) ($(kv rotation_errors rotation.txt)) at $(kv rotation_achieved_rps rotation.txt) req/s" \
	"rotation: token requests = tokens used" "$(kv rotation_token_requests rotation.txt) = $(kv rotation_tokens_used rotation.txt) (the token in use at the start + $(kv rotation_rotations rotation.txt) rotations; $(kv rotation_token_requests_at_end rotation.txt) in flight at the end)" \
	"rotation: upstream refused (unknown/expired)" "$(kv rotation_upstream_rejected rotation.txt)" \
	"rotation: p50 ms during / between" "$(kv rotation_p50_during_ms rotation.txt) / $(kv rotation_p50_between_ms rotation.txt)" \
	"rotation: p99 ms during / all between" "$(kv rotation_p99_during_ms rotation.txt) / $(kv rotation_p99_between_ms rotation.txt) (ratio $(kv rotation_p99_ratio rotation.txt))" \
	"rotation: p99 ms during / just before" "$(kv rotation_p99_during_ms rotation.txt) / $(kv rotation_p99_control_ms rotation.txt) (ratio $(kv rotation_p99_ratio_control rotation.txt); target <= 1.10)" \
	"rotation: max ms during / all between" "$(kv rotation_max_during_ms rotation.txt) / $(kv rotation_max_between_ms rotation.txt)" \
	"rotation: samples during / between / before" "$(kv rotation_during_n rotation.txt) / $(kv rotation_between_n rotation.txt) / $(kv rotation_control_n rotation.txt)" |
	tee "$BENCH_OUT/summary.txt"

[[ "$stampede_ok" == yes ]] || fail "stampede check failed (see above)"
[[ "$rotation_ok" == yes ]] || fail "rotation check failed (see above)"
echo
echo "bench-e2e: done; raw results in $BENCH_OUT"
