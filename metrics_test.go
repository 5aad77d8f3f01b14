package oauthbearer

import (
	"fmt"
	"regexp"
	"strings"
	"testing"
)

// Metrics appear on a real Caddy's /metrics with bounded labels, and carry
// no secret, token or client id.
func TestMetricsExposed(t *testing.T) {
	as := newFakeAS(t, "", "basic")
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
}`, as.tokenURL(), as.clientID, as.secret, up.hostport(), as.tokenURL(), up.hostport()))

	c.get("/ok/1")
	c.get("/ok/2")
	c.get("/bad/1")
	c.get("/bad/2") // backing off
	_, body := c.get("/metrics")

	for _, want := range []string{
		`caddy_oauth_bearer_token_requests_total{provider="generic",result="success"} 1`,
		`caddy_oauth_bearer_token_requests_total{provider="eventtemple",result="invalid_client"} 1`,
		`caddy_oauth_bearer_requests_failed_total{provider="eventtemple",result="invalid_client"} 1`,
		`caddy_oauth_bearer_requests_failed_total{provider="eventtemple",result="backing_off"} 1`,
		`caddy_oauth_bearer_token_request_duration_seconds_count{provider="generic"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	expiry := regexp.MustCompile(`caddy_oauth_bearer_token_expiry_seconds\{provider="generic",source="[0-9a-f]{12}"\} (\d+)`).FindStringSubmatch(body)
	if expiry == nil || expiry[1] < "3500" || len(expiry[1]) != 4 {
		t.Errorf("token expiry gauge missing or wrong: %v", expiry)
	}
	assertNoSecrets(t, body, as.secret, "wrong-secret", "metrics-client-id", as.clientID)
	for _, h := range up.requests() {
		assertNoSecrets(t, body, h.Get("Authorization"))
	}
}
