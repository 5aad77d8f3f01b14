# caddy-oauth-bearer: build a Caddy with this module, run the demo, test.
#
#   make build   ./caddy: Caddy v2.11.9 with http.handlers.oauth_bearer
#   make run     build, then run Caddyfile.example (a self-contained demo)
#   make test    install what the tests need if missing (scripts/test-deps:
#                redis-server, chromium, node packages), gofmt check, go vet,
#                go test -race
#   make fuzz    run each fuzz target for FUZZTIME (default 10s)
#   make bench   Go benchmarks (hot path, x/oauth2, stampede, memory), medians
#   make bench-e2e  build, then wrk through Caddy: oauth_bearer vs a static header
#   make bench-dpop build, then wrk through Caddy: oauth_bearer with dpop vs a static header
#   make bench-fleet  token requests per lifetime for 1, 3 and 5 Caddy processes
#   make bench-fleet-grants  grants at fleet scale: N processes × M accounts
#   make clean   remove ./caddy

CADDY_VERSION ?= v2.11.9
MODULE        := github.com/oauthbearer/caddy-oauth-bearer
GO            ?= go

# What ./caddy is built from: the module's non-test sources and go.mod/go.sum.
SOURCES := $(filter-out %_test.go,$(wildcard *.go */*.go */*/*.go)) go.mod go.sum

.PHONY: all build run test test-deps fmt-check vet fuzz clean
.PHONY: bench bench-e2e bench-dpop bench-fleet bench-fleet-grants

all: build

build: caddy

# xcaddy is a tool dependency of this module (go.mod: tool ...xcaddy).
# "@v0.0.0=." replaces the module with this directory; the version is
# required (without it xcaddy asks the module proxy, which refuses).
caddy: $(SOURCES)
	$(GO) tool xcaddy build $(CADDY_VERSION) --output ./caddy --with $(MODULE)@v0.0.0=.

run: caddy
	./caddy run --config Caddyfile.example --adapter caddyfile

# No -short: the tests that run a real Caddy skip under -short.
# .cache/node/bin holds a current node when the system's is too old for
# oidc-provider (scripts/test-deps puts it there).
test: test-deps fmt-check vet
	PATH="$(CURDIR)/.cache/node/bin:$$PATH" $(GO) test -race -count=1 -timeout 30m ./...

# gcc (for -race), redis-server, chromium, node and the test servers' node
# packages: installed when missing (as root with apt-get), else named.
test-deps:
	@bash scripts/test-deps

fmt-check:
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then \
		echo "gofmt: these files are not formatted (run gofmt -w .):"; \
		echo "$$unformatted"; \
		exit 1; \
	fi

vet:
	$(GO) vet ./...

# Each fuzz target (package:target) for FUZZTIME (a duration, or a count
# of inputs such as 20000x); failing inputs land in the package's
# testdata/fuzz/. CI gives a count: with a duration, Go 1.26's coordinator
# can fail a target with a bare "context deadline exceeded" and no failing
# input when the time runs out on a busy machine (golang/go#75804).
FUZZTIME ?= 10s
FUZZ_TARGETS := .:FuzzCaddyfile .:FuzzTokenSchedule \
	./internal/oauthclient:FuzzTokenResponse ./internal/oauthclient:FuzzAppendJSONString
fuzz:
	@for t in $(FUZZ_TARGETS); do \
		p=$${t%%:*}; f=$${t##*:}; \
		echo "fuzzing $$f ($$p) for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$p || exit 1; \
	done

# Benchmarks: see BENCHMARKS.md. BENCH_COUNT runs of each at -cpu 1,2; the
# raw output goes to a file under /tmp (or BENCH_OUT) and its medians, with
# the x/oauth2 ratios, are printed at the end. BENCH selects benchmarks.
BENCH       ?= .
BENCH_COUNT ?= 5
BENCH_TIME  ?= 500ms
bench:
	@out="$${BENCH_OUT:-$$(mktemp /tmp/oauth-bearer-bench.XXXXXX)}"; \
	{ $(GO) test -run '^$$' -bench '$(BENCH)' -benchmem -cpu 1,2 -count $(BENCH_COUNT) -benchtime $(BENCH_TIME) -timeout 30m . 2>&1; \
		echo $$? >"$$out.rc"; } | tee "$$out"; \
	rc=$$(cat "$$out.rc"); rm -f "$$out.rc"; [ "$$rc" = 0 ] || exit "$$rc"; \
	$(GO) run ./bench/cmd/oauthbench benchsum "$$out"; \
	echo "raw output: $$out"

# End to end through ./caddy with wrk (installed if missing): throughput and
# p99 of oauth_bearer vs a static request_header vs no header, the stampede,
# and token rotation under load. About 5 minutes; knobs in bench/e2e.sh.
bench-e2e:
	bash bench/e2e.sh

# End to end through ./caddy with wrk: oauth_bearer with dpop (a fresh proof
# per request) vs a static request_header, alternated; knobs in bench/dpop-e2e.sh.
bench-dpop:
	bash bench/dpop-e2e.sh

clean:
	rm -f caddy

# Several Caddy processes (this test binary run as caddy) on one storage,
# under load: token requests per token lifetime, shared store vs memory.
# About 3 minutes.
bench-fleet:
	OAB_BENCH_FLEET=1 $(GO) test -run '^$$' -bench 'FleetTokenRequests' -benchtime 1x -count 1 -timeout 30m .

# Grants at fleet scale (grantbench_test.go): N processes on one storage
# holding M connected accounts, 60 s tokens, per row the redemptions and
# storage operations per grant per lifetime, CPU and memory, p99 during
# refresh waves, then the restart and outage scenarios. About 3 minutes a
# row (the grid of BENCHMARKS.md and the scenarios: about 45 minutes). OAB_BENCH_ROWS picks rows
# (storage:processes:accounts,...; "none" for the scenarios alone),
# OAB_BENCH_SCENARIOS=0 skips the scenarios; other knobs in the file.
bench-fleet-grants:
	OAB_BENCH_FLEET_GRANTS=1 $(GO) test -run '^$$' -bench 'FleetGrants' -benchtime 1x -count 1 -timeout 6h .
