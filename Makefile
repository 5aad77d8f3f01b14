# caddy-oauth-bearer: build a Caddy with this module, run the demo, test.
#
#   make build   ./caddy: Caddy v2.11.9 with http.handlers.oauth_bearer
#   make run     build, then run Caddyfile.example (a self-contained demo)
#   make test    gofmt check, go vet, go test -race
#   make fuzz    run each fuzz target for FUZZTIME (default 10s)
#   make clean   remove ./caddy

CADDY_VERSION ?= v2.11.9
MODULE        := github.com/oauthbearer/caddy-oauth-bearer
GO            ?= go

# What ./caddy is built from: the module's non-test sources and go.mod/go.sum.
SOURCES := $(filter-out %_test.go,$(wildcard *.go */*.go)) go.mod go.sum

.PHONY: all build run test fmt-check vet fuzz clean

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
test: fmt-check vet
	$(GO) test -race -count=1 ./...

fmt-check:
	@unformatted="$$(gofmt -l .)"; \
	if [ -n "$$unformatted" ]; then \
		echo "gofmt: these files are not formatted (run gofmt -w .):"; \
		echo "$$unformatted"; \
		exit 1; \
	fi

vet:
	$(GO) vet ./...

# Each fuzz target for FUZZTIME; failing inputs land in testdata/fuzz/.
FUZZTIME ?= 10s
FUZZ_TARGETS := FuzzTokenResponse FuzzCaddyfile
fuzz:
	@for f in $(FUZZ_TARGETS); do \
		echo "fuzzing $$f for $(FUZZTIME)"; \
		$(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) . || exit 1; \
	done

clean:
	rm -f caddy
