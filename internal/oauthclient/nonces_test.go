package oauthclient

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
)

func TestNoncesKeepTheLatestPerOrigin(t *testing.T) {
	var n Nonces
	const as, rs = "https://as.example.com:443", "https://api.example.com:443"
	if got := n.Get(as); got != "" {
		t.Fatalf("empty store: %q", got)
	}
	if !n.Set(as, "n1") || n.Get(as) != "n1" || n.Get(rs) != "" {
		t.Fatalf("after Set(as, n1): as %q rs %q", n.Get(as), n.Get(rs))
	}
	// Any answer carrying a nonce replaces it: a challenge or a success.
	for i, h := range []http.Header{
		{"Dpop-Nonce": {"n2"}},
		{"Dpop-Nonce": {"n3"}, "Www-Authenticate": {`DPoP error="use_dpop_nonce"`}},
	} {
		got, ok := n.Observe(as, h)
		want := fmt.Sprintf("n%d", i+2)
		if !ok || got != want || n.Get(as) != want {
			t.Errorf("Observe %v: %q %v, kept %q", h, got, ok, n.Get(as))
		}
	}
	// Answers without one, or with an invalid one, change nothing.
	for _, h := range []http.Header{
		{},
		{"Dpop-Nonce": {""}},
		{"Dpop-Nonce": {`has"quote`}},
		{"Dpop-Nonce": {"has space"}},
		{"Dpop-Nonce": {strings.Repeat("x", maxNonceLen+1)}},
	} {
		if got, ok := n.Observe(as, h); ok || got != "" || n.Get(as) != "n3" {
			t.Errorf("Observe %v: %q %v, kept %q; want n3 kept", h, got, ok, n.Get(as))
		}
	}
	if n.Get(rs) != "" {
		t.Errorf("the other origin got %q", n.Get(rs))
	}
}

// Readers and writers at once, for -race; a reader never sees a value that
// was not set.
func TestNoncesConcurrent(t *testing.T) {
	var n Nonces
	origins := []string{"https://a.example:443", "https://b.example:443", "http://c.example:8080"}
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := range 500 {
				o := origins[i%len(origins)]
				n.Set(o, fmt.Sprintf("%s-%d-%d", strings.TrimPrefix(o[:9], "http"), w, i))
			}
		})
		wg.Go(func() {
			for i := range 500 {
				o := origins[i%len(origins)]
				if v := n.Get(o); v != "" && !strings.Contains(v, "-") {
					t.Errorf("read %q", v)
				}
			}
		})
	}
	wg.Wait()
	for _, o := range origins {
		if n.Get(o) == "" {
			t.Errorf("%s: no nonce kept", o)
		}
	}
}

func TestValidNonce(t *testing.T) {
	for s, want := range map[string]bool{
		"eyJ7S_zG.eyJH0-Z.HX4w-7v":       true, // RFC 9449 §8
		"!#$%&'()*+,-./:;<=>?@[]^_`{|}~": true,
		"":                               false,
		"a b":                            false,
		`a"b`:                            false,
		`a\b`:                            false,
		"a\x7f":                          false,
		"é":                              false,
		strings.Repeat("n", maxNonceLen): true,
	} {
		if ValidNonce(s) != want {
			t.Errorf("ValidNonce(%q) = %v", s, !want)
		}
	}
}

func TestOrigin(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"https://API.example.com/v1/x?q=1", "https://api.example.com:443"},
		{"HTTP://api.example.com", "http://api.example.com:80"},
		{"https://api.example.com:8443/", "https://api.example.com:8443"},
		{"http://127.0.0.1:9000/token", "http://127.0.0.1:9000"},
		{"http://[::1]/x", "http://[::1]:80"},
		{"ftp://x.example/", ""},
		{"/relative", ""},
		{"://", ""},
		{"ftp://u:pw-secret@x.example/", ""},
		{"http://u:pw-secret@[::1/", ""},
	} {
		got, err := Origin(tc.in)
		if tc.want == "" {
			if err == nil {
				t.Errorf("%s: %q, want an error", tc.in, got)
			} else if strings.Contains(err.Error(), "pw-secret") {
				t.Errorf("%s: the error shows the password: %v", tc.in, err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("%s: %q, %v; want %s", tc.in, got, err, tc.want)
		}
	}
}
