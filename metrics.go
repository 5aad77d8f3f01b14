package oauthbearer

import (
	"errors"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
)

// Metrics live in Caddy's registry (served on /metrics when the user enables
// metrics). Collectors are created once per process and registered in every
// configuration's registry. Labels are bounded: the provider name, a result
// from a fixed set, and a short hash naming a credential set. Never a
// token, a secret, a client id or a per-request value.
var metrics = struct {
	once             sync.Once
	tokenRequests    *prometheus.CounterVec
	tokenDuration    *prometheus.HistogramVec
	failedRequests   *prometheus.CounterVec
	upstream401      *prometheus.CounterVec
	consents         *prometheus.CounterVec
	storageFallbacks *prometheus.CounterVec
	expiryCollector  prometheus.Collector
}{}

const metricsNS, metricsSub = "caddy", "oauth_bearer"

// newCounter makes one of the module's counters.
func newCounter(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: metricsNS, Subsystem: metricsSub, Name: name, Help: help}, labels)
}

func initMetrics() {
	metrics.once.Do(func() {
		metrics.tokenRequests = newCounter("token_requests_total",
			"Token requests sent to token endpoints, by provider and result (success or an error class).", "provider", "result")
		metrics.tokenDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: metricsNS, Subsystem: metricsSub, Name: "token_request_duration_seconds",
			Help:    "Duration of token requests, by provider.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"provider"})
		metrics.failedRequests = newCounter("requests_failed_total",
			"Client requests answered without being forwarded because no valid token could be had.", "provider", "result")
		metrics.upstream401 = newCounter("upstream_unauthorized_total",
			"Upstream 401 answers to an injected token, by what was done: invalidated (token dropped), retried (request replayed with a new token), passed (answer passed to the client), replay_refused (the replay's new token was refused too).",
			"provider", "action")
		metrics.consents = newCounter("consent_events_total",
			"Authorization-code grants connected and disconnected, and grants found to need consent again (invalid_grant).", "provider", "event")
		metrics.storageFallbacks = newCounter("storage_fallbacks_total",
			"Token fetches made without the shared token store because the storage was slow, locked by another instance for too long, or failing.",
			"provider")
		metrics.expiryCollector = expiryCollector{desc: prometheus.NewDesc(
			prometheus.BuildFQName(metricsNS, metricsSub, "token_expiry_seconds"),
			"Seconds until the cached token of a token source expires (negative or absent: no valid token).",
			[]string{"provider", "source"}, nil)}
	})
}

// registerMetrics adds the collectors to a configuration's registry.
func registerMetrics(reg *prometheus.Registry) error {
	initMetrics()
	if reg == nil {
		return nil
	}
	for _, c := range []prometheus.Collector{metrics.tokenRequests, metrics.tokenDuration,
		metrics.failedRequests, metrics.upstream401, metrics.consents, metrics.storageFallbacks, metrics.expiryCollector} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}

// resultClass maps an error to a bounded label value: provider error codes
// are free text, so only the RFC 6749 ones and local ones are kept.
func resultClass(err error) string {
	if err == nil {
		return "success"
	}
	var ce *ConsentError
	var se *StorageError
	switch {
	case errors.As(err, &ce):
		return codeConsentRequired
	case errors.As(err, &se):
		return "storage_error"
	}
	var te *TokenError
	if !errors.As(err, &te) {
		return "error"
	}
	if te.Backoff {
		return "backing_off"
	}
	if te.RateLimited() {
		return "rate_limited"
	}
	switch te.Code {
	case "invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
		"unsupported_grant_type", "invalid_scope", "access_denied", "temporarily_unavailable",
		"server_error", "unreachable", "timeout", "tls_error", "invalid_response", "response_too_large",
		"unexpected_redirect", "unsupported_token_type", "backing_off", oauthclient.CodeLocalConfigError:
		return te.Code
	}
	if te.Status >= 500 {
		return "http_5xx"
	}
	if te.Status >= 400 {
		return "http_4xx"
	}
	return "other"
}

// expiryCollector reports, at scrape time, how long each live token
// source's token has left.
type expiryCollector struct{ desc *prometheus.Desc }

func (c expiryCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c expiryCollector) Collect(ch chan<- prometheus.Metric) {
	pool.Range(func(_, v any) bool {
		e, ok := v.(*sourceEntry)
		if !ok {
			return true
		}
		s := e.src
		left := -1.0
		if t := s.cur.Load(); t != nil {
			left = t.expiry.Sub(s.now()).Round(time.Second).Seconds()
		}
		ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, left, s.provider, s.id)
		return true
	})
}
