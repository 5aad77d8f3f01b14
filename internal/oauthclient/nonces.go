package oauthclient

// DPoP nonces (RFC 9449 §8, §9): a server may require its own value in the
// proofs' nonce claim, hands it out in a DPoP-Nonce header field (with a
// challenge, or on any answer, to rotate it), and refuses proofs with a
// stale one. The client keeps the latest value per origin, so that steady
// traffic carries the current nonce and needs no retries.

import (
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
)

// DPoPNonceHeader is the header field that carries a server's nonce.
const DPoPNonceHeader = "DPoP-Nonce"

// maxNonceLen caps a nonce kept: every proof to the origin carries it.
const maxNonceLen = 1024

// Nonces keeps the latest DPoP-Nonce per origin (scheme://host:port), for
// token endpoints and resource servers alike. The zero value is ready; it is
// safe for concurrent use, and Get takes no lock (a sync.Map of atomic
// pointers), so it belongs on the request path. The origins come from
// configuration (the token endpoint, the upstream base URL), so the map
// stays small.
type Nonces struct {
	m sync.Map // origin → *atomic.Pointer[string]
}

// Get is the latest nonce of origin, empty if none is known.
func (n *Nonces) Get(origin string) string {
	if v, ok := n.m.Load(origin); ok {
		if p := v.(*atomic.Pointer[string]).Load(); p != nil {
			return *p
		}
	}
	return ""
}

// Set keeps nonce as origin's latest. It reports false, keeping nothing,
// when nonce is not a valid DPoP-Nonce value (see ValidNonce).
func (n *Nonces) Set(origin, nonce string) bool {
	if !ValidNonce(nonce) {
		return false
	}
	v, ok := n.m.Load(origin)
	if !ok {
		v, _ = n.m.LoadOrStore(origin, new(atomic.Pointer[string]))
	}
	p := v.(*atomic.Pointer[string])
	if cur := p.Load(); cur != nil && *cur == nonce {
		return true // the same nonce again: nothing to allocate
	}
	p.Store(&nonce)
	return true
}

// Observe keeps the DPoP-Nonce of an answer from origin, if it carries a
// valid one, and returns it. Call it with every answer's header, success
// or failure: servers rotate nonces on any answer.
func (n *Nonces) Observe(origin string, h http.Header) (string, bool) {
	nonce := h.Get(DPoPNonceHeader)
	if nonce == "" || !n.Set(origin, nonce) {
		return "", false
	}
	return nonce, true
}

// ValidNonce reports whether s is a DPoP-Nonce value: 1*NQCHAR (RFC 9449
// §8.1: visible ASCII without '"' and '\'), at most 1024 bytes here.
func ValidNonce(s string) bool {
	if s == "" || len(s) > maxNonceLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x21 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// Origin is the origin of an absolute http or https URL as the nonces are
// kept: scheme://host:port, scheme and host in lower case, the port always
// present.
func Origin(rawURL string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("%s is not an absolute URL", describeURL(rawURL))
	}
	scheme := strings.ToLower(u.Scheme)
	if scheme != "http" && scheme != "https" {
		return "", fmt.Errorf("%s is not an http or https URL", describeURL(rawURL))
	}
	return OriginOf(u), nil
}

// OriginOf is u's origin, as Origin; u must be absolute.
func OriginOf(u *url.URL) string {
	scheme := strings.ToLower(u.Scheme)
	port := u.Port()
	if port == "" {
		switch scheme {
		case "http":
			port = "80"
		case "https":
			port = "443"
		}
	}
	return scheme + "://" + net.JoinHostPort(strings.ToLower(u.Hostname()), port)
}
