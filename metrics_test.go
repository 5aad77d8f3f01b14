package oauthbearer

import (
	"fmt"
	"regexp"
	"strconv"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

func histogramCount(t *testing.T, provider string) float64 {
	var m dto.Metric
	if err := metrics.tokenDuration.WithLabelValues(provider).(interface{ Write(*dto.Metric) error }).Write(&m); err != nil {
		t.Fatal(err)
	}
	return float64(m.GetHistogram().GetSampleCount())
}

// Metrics appear on a real Caddy's /metrics with bounded labels, and carry
// no secret, token or client id.
func TestMetricsExposed(t *testing.T) {
	as := newFakeAS(t)
	as.ClientAuth = "basic"
	up := newUpstream(t)
	c := startCaddy(t, fmt.Sprintf(`http://LISTEN {
	handle /metrics {
		metrics
	}
	handle /ok/* {
		oauth_bearer {
			token_url     %s
			client_id     %s
			client_secret "%s"
		}
		reverse_proxy %s
	}
	handle /bad/* {
		oauth_bearer eventtemple {
			token_url     %s
			client_id     metrics-client-id
			client_secret wrong-secret
			client_auth   basic
		}
		reverse_proxy %s
	}
}`, as.tokenURL(), as.ClientID, as.Secret, up.hostport(), as.tokenURL(), up.hostport()))

	// Counters are process-wide and other tests add to them: compare with
	// what they held before.
	initMetrics()
	before := map[string]float64{
		`caddy_oauth_bearer_token_requests_total{provider="generic",result="success"}`:             testutil.ToFloat64(metrics.tokenRequests.WithLabelValues("generic", "success")),
		`caddy_oauth_bearer_token_requests_total{provider="eventtemple",result="invalid_client"}`:  testutil.ToFloat64(metrics.tokenRequests.WithLabelValues("eventtemple", "invalid_client")),
		`caddy_oauth_bearer_requests_failed_total{provider="eventtemple",result="invalid_client"}`: testutil.ToFloat64(metrics.failedRequests.WithLabelValues("eventtemple", "invalid_client")),
		`caddy_oauth_bearer_requests_failed_total{provider="eventtemple",result="backing_off"}`:    testutil.ToFloat64(metrics.failedRequests.WithLabelValues("eventtemple", "backing_off")),
		`caddy_oauth_bearer_token_request_duration_seconds_count{provider="generic"}`:              histogramCount(t, "generic"),
	}
	c.get("/ok/1")
	c.get("/ok/2")
	c.get("/bad/1")
	c.get("/bad/2") // backing off
	_, body := c.get("/metrics")

	for series, was := range before {
		m := regexp.MustCompile(regexp.QuoteMeta(series) + ` (\S+)`).FindStringSubmatch(body)
		if m == nil {
			t.Errorf("/metrics lacks %s", series)
			continue
		}
		if got, _ := strconv.ParseFloat(m[1], 64); got != was+1 {
			t.Errorf("%s = %v, want %v", series, got, was+1)
		}
	}
	expiry := regexp.MustCompile(`caddy_oauth_bearer_token_expiry_seconds\{provider="generic",source="[0-9a-f]{12}"\} (\d+)`).FindStringSubmatch(body)
	if expiry == nil || expiry[1] < "3500" || len(expiry[1]) != 4 {
		t.Errorf("token expiry gauge missing or wrong: %v", expiry)
	}
	assertNoSecrets(t, body, as.Secret, "wrong-secret", "metrics-client-id", as.ClientID)
	for _, h := range up.requests() {
		assertNoSecrets(t, body, h.Get("Authorization"))
	}
}

// The result label of a token error is its class even when the error is
// wrapped on its way (errors.As, not a type assertion).
func TestMetricsResultClassOfWrappedTokenError(t *testing.T) {
	te := &TokenError{Code: "invalid_client"}
	for _, err := range []error{te, fmt.Errorf("refreshing: %w", te)} {
		if got := resultClass(err); got != "invalid_client" {
			t.Errorf("resultClass(%v) = %q, want invalid_client", err, got)
		}
	}
}
