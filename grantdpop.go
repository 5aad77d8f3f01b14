package oauthbearer

// grantdpop.go: DPoP (RFC 9449) for the authorization_code and
// refresh_token grants. A grant's tokens are bound to the grant's key: the
// configured dpop_key, or a P-256 key made when the account is connected
// (the consent handler's connect, kept in the sealed state cookie until the
// callback, and sent as dpop_jkt in the authorization request) and kept in
// the account's grant record, encrypted with it, so that every instance of
// a fleet, and the consent handler, signs the grant's refreshes and
// requests with the key its tokens are bound to. The code exchange and
// every refresh carry a proof with it (htm POST, htu the token URL, the
// token endpoint's nonce). Reconnecting an account replaces the key with
// the new grant's; a grant record without a key (written before DPoP was
// configured, or by a consent handler without dpop) keeps working as
// Bearer.
//
// The key's use does not depend on this handler's dpop: a grant record
// holds its key, and a refresh signs with it whatever the configuration
// (the server may require it). Only the injector needs dpop's base URL; an
// oauth_bearer without dpop refuses a bound token (module.go) instead of
// sending it as Bearer, which the resource server would refuse.

import (
	"reflect"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
)

// grantDPoP is a grant's DPoP state: the stored keys parsed (by account),
// and the warnings logged once.
type grantDPoP struct {
	mu     sync.Mutex
	parsed map[string]parsedKey // account → its record's key, parsed

	bearerWarned   atomic.Bool // a token endpoint answered Bearer to a proof
	unboundWarned  atomic.Bool // an injector with dpop met a grant without a key
	mismatchWarned atomic.Bool // an injector without dpop met a bound grant
}

type parsedKey struct {
	der string
	key *oauthclient.DPoPKey
}

// newDPoPKey is the key of a grant being connected: dpop_key (nothing to
// keep), else a new P-256 key and its PKCS#8 DER, kept in the grant
// record. nil without dpop.
func (g *grant) newDPoPKey() (*oauthclient.DPoPKey, []byte, error) {
	if g.cfg.DPoP == "" {
		return nil, nil, nil
	}
	if g.cfg.dpopKey != nil {
		return g.cfg.dpopKey, nil, nil
	}
	return newKeptDPoPKey()
}

// parseDPoPKey reads a key kept in a grant record or a consent state.
func (g *grant) parseDPoPKey(account string, der []byte) (*oauthclient.DPoPKey, error) {
	d := &g.dpop
	d.mu.Lock()
	defer d.mu.Unlock()
	if p, ok := d.parsed[account]; ok && p.der == string(der) {
		return p.key, nil
	}
	key, err := oauthclient.ParseDPoPKeyPKCS8(der)
	if err != nil {
		return nil, err
	}
	if d.parsed == nil {
		d.parsed = map[string]parsedKey{}
	}
	if len(d.parsed) > 10000 {
		clear(d.parsed) // a cache: bounded by the accounts in use
	}
	d.parsed[account] = parsedKey{der: string(der), key: key}
	return key, nil
}

// recordDPoPKey is the key rec's grant is bound to: the one kept in the
// record, or dpop_key when the record names its thumbprint only; nil for
// a grant without a key (Bearer). The error says what to configure.
func (g *grant) recordDPoPKey(rec *grantRecord) (*oauthclient.DPoPKey, error) {
	if rec == nil || (len(rec.DPoPKey) == 0 && rec.JKT == "") {
		return nil, nil
	}
	if len(rec.DPoPKey) > 0 {
		key, err := g.parseDPoPKey(rec.Account, rec.DPoPKey)
		if err != nil || (rec.JKT != "" && key.Thumbprint() != rec.JKT) {
			return nil, &TokenError{Provider: g.cfg.Provider, Code: oauthclient.CodeLocalConfigError,
				Description: "the DPoP key kept with the grant of account " + rec.Account + " is not usable; connect the account again"}
		}
		return key, nil
	}
	if k := g.cfg.dpopKey; k != nil && k.Thumbprint() == rec.JKT {
		return k, nil
	}
	return nil, &TokenError{Provider: g.cfg.Provider, Code: oauthclient.CodeLocalConfigError,
		Description: "the grant of account " + rec.Account + " is bound to the DPoP key " + rec.JKT +
			" (a dpop_key), which this handler does not have: give oauth_bearer and oauth_bearer_consent the same dpop and dpop_key"}
}

// recordToken is rec's access token (rec.token) with the key it is bound
// to when the record says it is (token_type DPoP).
func (g *grant) recordToken(rec *grantRecord) (*token, error) {
	t := rec.token()
	if t == nil {
		return nil, nil
	}
	if rec.TokenType != oauthclient.TokenTypeDPoP {
		if g.cfg.DPoP != "" && len(rec.DPoPKey) == 0 && rec.JKT == "" && g.dpop.unboundWarned.CompareAndSwap(false, true) {
			g.env.logger().Warn("a grant was connected without DPoP (before dpop was configured, or by an oauth_bearer_consent without dpop): its tokens are sent as Bearer; connect the account again to bind them",
				zap.String("provider", g.cfg.Provider), zap.String("account", rec.Account))
		}
		return t, nil
	}
	key, err := g.recordDPoPKey(rec)
	if err != nil {
		return nil, err
	}
	if key == nil {
		return nil, &TokenError{Provider: g.cfg.Provider, Code: oauthclient.CodeLocalConfigError,
			Description: "the grant of account " + rec.Account + " is DPoP-bound but its key is not kept; connect the account again"}
	}
	t.dpopKey = key
	return t, nil
}

// bindAnswer notes in next what the token endpoint answered to a request
// signed with key (nil: none): the token's type and the key's thumbprint,
// and binds tok to the key when the server did. A Bearer answer to a
// proof is logged once at warn: the token is sent as Bearer.
func (g *grant) bindAnswer(next *grantRecord, tok *token, tokenType string, key *oauthclient.DPoPKey) {
	next.TokenType = ""
	if key == nil {
		return
	}
	next.JKT = key.Thumbprint()
	if tokenType == oauthclient.TokenTypeDPoP {
		next.TokenType, tok.dpopKey = oauthclient.TokenTypeDPoP, key
		return
	}
	if g.dpop.bearerWarned.CompareAndSwap(false, true) {
		g.env.logger().Warn("the token endpoint answered a Bearer token to a grant's request with a DPoP proof: the server does not bind tokens for this client; sending it as Bearer",
			zap.String("provider", g.cfg.Provider), zap.String("account", next.Account))
	}
}

// grantDPoPView is what the admin API and the status endpoint show of a
// grant's DPoP: the key's thumbprint (public) and whether the token is
// bound to it.
type grantDPoPView struct {
	JKT   string `json:"jkt"`
	Bound bool   `json:"bound"`
}

func recordDPoPView(rec *grantRecord) *grantDPoPView {
	if rec == nil || rec.JKT == "" {
		return nil
	}
	return &grantDPoPView{JKT: rec.JKT, Bound: rec.TokenType == oauthclient.TokenTypeDPoP}
}

// warnDPoPMismatch logs, when a configuration is loaded, that handlers of
// one grant in it disagree about DPoP: a consent handler with dpop and an
// injector without (its requests with a bound token are refused), or the
// reverse (the grants it connects are Bearer). The handlers of one
// configuration are told apart from those of the one it replaces by their
// storage: each configuration has its own storage value.
func (g *grant) warnDPoPMismatch(logger *zap.Logger, u *use) {
	if u.storage == nil || !reflect.TypeOf(u.storage).Comparable() {
		return
	}
	pool.Range(func(_ any, v any) bool {
		o, ok := v.(*grant)
		if !ok || o == g || o.id != g.id || (o.cfg.DPoP == "") == (g.cfg.DPoP == "") || !o.env.usedWith(u.storage) {
			return true
		}
		logger.Warn("handlers of one grant disagree about DPoP: one has dpop, another has not; give oauth_bearer and oauth_bearer_consent the same dpop line (a shared snippet)",
			zap.String("provider", g.cfg.Provider), zap.String("dpop", g.cfg.DPoP), zap.String("other_dpop", o.cfg.DPoP))
		return false
	})
}

// usedWith reports whether a configuration whose storage is s uses the
// entry (s's type is comparable).
func (e *env) usedWith(s certmagic.Storage) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, u := range e.list {
		if u.storage != nil && reflect.TypeOf(u.storage) == reflect.TypeOf(s) && u.storage == s {
			return true
		}
	}
	return false
}

// dpopMissing is the refusal of a request whose grant's token is
// DPoP-bound (its account was connected by an oauth_bearer_consent with
// dpop) while this oauth_bearer has no dpop: sent as Bearer, the resource
// server would refuse it. Logged once per handler's grant.
func (h *Handler) dpopMissing() error {
	const desc = "the grant's token is DPoP-bound (connected by an oauth_bearer_consent with dpop), but this oauth_bearer has no dpop: give it the same dpop line"
	if g := h.grant; g != nil && g.dpop.mismatchWarned.CompareAndSwap(false, true) {
		h.logger.Error("a DPoP-bound grant reached an oauth_bearer without dpop: its requests are refused; give oauth_bearer and oauth_bearer_consent the same dpop line (a shared snippet)",
			zap.String("provider", h.provider))
	}
	return &TokenError{Provider: h.provider, Code: codeDPoPNotConfigured, Description: desc}
}

// codeDPoPNotConfigured is the refusal's error code (dpopMissing).
const codeDPoPNotConfigured = "dpop_not_configured"
