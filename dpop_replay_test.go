package oauthbearer

import (
	"net/http"
	"testing"
)

// A DPoP challenge's invalid_token refuses the token as a Bearer one does
// (a new token is fetched, the request replayed); invalid_dpop_proof and
// use_dpop_nonce are about the proof, not the token.
func TestTokenRejectedDPoPChallenges(t *testing.T) {
	for _, tc := range []struct {
		challenge string
		want      bool
	}{
		{`DPoP algs="ES256", error="invalid_token", error_description="expired"`, true},
		{`DPoP error="invalid_dpop_proof"`, false},
		{`DPoP error="use_dpop_nonce"`, false},
		{`DPoP algs="ES256"`, false},
		{`Bearer error="invalid_token"`, true},
	} {
		h := http.Header{"Www-Authenticate": {tc.challenge}}
		if got := tokenRejected(http.StatusUnauthorized, h); got != tc.want {
			t.Errorf("401 %s: token rejected %v, want %v", tc.challenge, got, tc.want)
		}
	}
}
