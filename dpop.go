package oauthbearer

// dpop.go: DPoP (RFC 9449) in the handler. With `dpop <base URL>`, the
// token requests carry proofs (internal/oauthclient: WithDPoPKey), the
// token is sent as Authorization: DPoP, and every upstream request gets a
// fresh proof signed with the key the token is bound to.
//
// The key travels with the token: a token's dpopKey is the key it is bound
// to, so the request path never pairs a token with another key. Which key
// that is, is decided on the token-fetch path (never in Provision, never on
// the request path): dpop_key when configured; else the key kept in the
// shared token record (sharedtoken.go), generated once, under the record's
// lock, by the first instance that needs it, so that a fleet and a restarted
// process sign with the key the shared token is bound to; else (token_store
// memory, or a storage that fails) a key of this process's own.

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
)

// dpopHeader is the canonical key of the DPoP header field.
const dpopHeader = "Dpop"

// checkDPoP: dpop is an upstream base URL (checked once resolved when it
// holds placeholders); dpop_key needs dpop; the token goes in
// Authorization with the DPoP scheme, so token_header and token_prefix do
// not combine with dpop.
func (h *Handler) checkDPoP() error {
	if err := h.Credentials.checkDPoP(); err != nil || h.DPoP == "" {
		return err
	}
	if h.TokenHeader != "" || h.TokenPrefix != nil {
		return errField("dpop", "sends the token as Authorization: DPoP <token>; it cannot be combined with token_header")
	}
	return nil
}

// checkDPoP is the rules of dpop and dpop_key that both directives share.
func (c *Credentials) checkDPoP() error {
	if c.DPoP == "" {
		if c.DPoPKey != "" {
			return errField("dpop_key", "needs dpop <upstream base URL>: the key signs the proofs of the requests to that API")
		}
		return nil
	}
	if !strings.Contains(c.DPoP, "{") {
		if _, err := dpopBaseURL(c.DPoP); err != nil {
			return err
		}
	}
	if c.DPoPKey != "" && !strings.Contains(c.DPoPKey, "{") {
		// A literal key (a path or the PEM) is checked at load: its
		// type, its size. A placeholder is resolved in Provision.
		if _, err := oauthclient.LoadDPoPKey(c.DPoPKey); err != nil {
			return errField("dpop_key", "%s", strings.TrimPrefix(err.Error(), "dpop_key: "))
		}
	}
	return nil
}

// dpopBaseURL checks raw as dpop's base URL and returns it normalised as a
// proof's htu is (oauthclient.NormalizeHTU), without a trailing slash: the
// request's path is appended to it.
func dpopBaseURL(raw string) (string, error) {
	u, err := url.Parse(raw)
	switch {
	case err != nil:
		return "", errField("dpop", "%q is not a URL", truncate(raw, 200))
	case (u.Scheme != "http" && u.Scheme != "https") || u.Host == "":
		return "", errField("dpop", "%q is not an absolute http or https URL (the upstream API's base URL, as its resource server sees requests)", truncate(u.Redacted(), 200))
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "" || strings.Contains(raw, "#"):
		return "", errField("dpop", "%q has a query or a fragment; a proof's htu has neither: give the base URL only", truncate(u.Redacted(), 200))
	}
	htu, err := oauthclient.NormalizeHTU(raw)
	if err != nil {
		return "", errField("dpop", "%v", err)
	}
	return strings.TrimSuffix(htu, "/"), nil
}

// resolveDPoP resolves dpop and dpop_key into the credential set: the base
// URL and the configured key's thumbprint (public) decide which token is
// shared; the key itself is kept out of every printed form.
func (h *Credentials) resolveDPoP(repl *caddy.Replacer, cs *credentialSet) error {
	if h.DPoP == "" {
		return nil
	}
	base, err := dpopBaseURL(repl.ReplaceKnown(h.DPoP, ""))
	if err != nil {
		return err
	}
	cs.DPoP = base
	if h.DPoPKey != "" {
		v, err := resolveRequired(repl, "dpop_key", h.DPoPKey)
		if err != nil {
			return err
		}
		key, err := oauthclient.LoadDPoPKey(v)
		if err != nil {
			return errField("dpop_key", "%s", strings.TrimPrefix(err.Error(), "dpop_key: "))
		}
		cs.dpopKey, cs.DPoPJKT = key, key.Thumbprint()
	}
	return nil
}

// setupDPoP prepares the request path's part: the base URL, its origin,
// and the nonce store of the credential set's endpoint (shared by the
// handlers of one credential set, so a nonce outlives a config reload).
func (h *Handler) setupDPoP(ep *endpoint) {
	if ep.cfg.DPoP == "" {
		h.dpop = nil
		return
	}
	origin, _ := oauthclient.Origin(ep.cfg.DPoP) // checked in dpopBaseURL
	d := &dpopInjector{base: ep.cfg.DPoP, origin: origin, nonces: ep.Nonces(), logger: h.logger, provider: h.provider}
	retry := h.Upstream401 != upstream401Off
	d.shouldBuffer = func(status int, hdr http.Header) bool {
		// Every answer's nonce is kept: the server rotates it on any
		// answer, and steady traffic then needs no retries.
		d.nonces.Observe(d.origin, hdr)
		if _, ok := oauthclient.ResourceNonceChallenge(status, hdr); ok {
			return true
		}
		return retry && tokenRejected(status, hdr)
	}
	h.dpop = d
}

// dpopInjector puts the token and a fresh proof on upstream requests.
type dpopInjector struct {
	base         string // normalised, no trailing slash
	origin       string // base's, as nonces are kept
	nonces       *oauthclient.Nonces
	logger       *zap.Logger
	provider     string
	shouldBuffer func(status int, hdr http.Header) bool // replay.go's recorder
	failed       atomic.Bool                            // a proof failed to sign (logged once)
}

// inject sets Authorization and the DPoP proof. A client's own DPoP header
// is removed first: only this handler's proof goes upstream. A token the
// server did not bind (token_type Bearer) is sent as Bearer, without a
// proof.
func (d *dpopInjector) inject(r *http.Request, tok *token) {
	delete(r.Header, dpopHeader)
	if tok.dpopKey == nil {
		setHeader(r.Header, "Authorization", tok.bearer)
		return
	}
	setHeader(r.Header, "Authorization", tok.dpopAuth)
	proof, err := tok.dpopKey.Proof(oauthclient.ProofParams{Method: r.Method, URL: d.base, Path: htuPath(r),
		AccessTokenHash: tok.ath, Nonce: d.nonces.Get(d.origin)})
	if err != nil {
		// Only a signer that fails (a key in hardware) or a method that is
		// not a token gets here: the resource server refuses the request
		// without a proof, and the token stays useless to anyone else.
		if d.failed.CompareAndSwap(false, true) {
			d.logger.Error("cannot sign a DPoP proof", zap.String("provider", d.provider), zap.Error(err))
		}
		return
	}
	r.Header[dpopHeader] = []string{proof}
}

// htuPath is the request's path, as this handler sees it, without query or
// fragment: the proof's htu is the base URL with it appended.
func htuPath(r *http.Request) string {
	p := r.URL.EscapedPath()
	if p == "" || p[0] != '/' {
		p = "/" + p
	}
	return p
}

// dpopKeys decides a fetcher's DPoP key (see the file comment) and binds
// the tokens it gets to it.
type dpopKeys struct {
	configured *oauthclient.DPoPKey // dpop_key
	provider   string
	env        *env

	mu        sync.Mutex
	own       *oauthclient.DPoPKey // this process's own, made once
	parsedDER []byte               // the stored key last parsed...
	parsed    *oauthclient.DPoPKey // ...and its key

	bearerWarned atomic.Bool // a token came back unbound (logged once)
}

// newDPoPKeys is nil when the credential set has no dpop.
func newDPoPKeys(cs *credentialSet, e *env) *dpopKeys {
	if cs.DPoP == "" {
		return nil
	}
	return &dpopKeys{configured: cs.dpopKey, provider: cs.Provider, env: e}
}

// ownKey is the configured key, else this process's own key, made at the
// first call and logged once at warn: tokens it binds are not shared.
func (k *dpopKeys) ownKey(why string) (*oauthclient.DPoPKey, error) {
	if k.configured != nil {
		return k.configured, nil
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.own == nil {
		key, err := oauthclient.GenerateDPoPKey()
		if err != nil {
			return nil, err
		}
		k.own = key
		k.env.logger().Warn("the DPoP key is this process's own: tokens bound to it are not shared with other instances",
			zap.String("provider", k.provider), zap.String("why", why), zap.String("jkt", key.Thumbprint()))
	}
	return k.own, nil
}

// stored is the key of a record (PKCS#8 DER), parsed once per value.
func (k *dpopKeys) stored(der []byte) (*oauthclient.DPoPKey, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.parsed != nil && string(k.parsedDER) == string(der) {
		return k.parsed, nil
	}
	key, err := oauthclient.ParseDPoPKeyPKCS8(der)
	if err != nil {
		return nil, err
	}
	k.parsedDER, k.parsed = append([]byte(nil), der...), key
	return key, nil
}

// fetch gets a token with the grant of ep, its request carrying proofs
// signed with key, and binds the token to key when the server did
// (token_type DPoP). A token the server did not bind is logged once at
// warn and sent as Bearer.
func (k *dpopKeys) fetch(ctx context.Context, key *oauthclient.DPoPKey, call func(context.Context) (*oauthclient.Token, error)) (*token, error) {
	ot, err := call(oauthclient.WithDPoPKey(ctx, key))
	t, err := fetched(ot, err)
	if err != nil {
		return nil, err
	}
	if ot.TokenType == oauthclient.TokenTypeDPoP {
		t.dpopKey = key
	} else if k.bearerWarned.CompareAndSwap(false, true) {
		k.env.logger().Warn("the token endpoint answered a Bearer token to a request with a DPoP proof: the server does not bind tokens for this client; sending it as Bearer",
			zap.String("provider", k.provider))
	}
	return t, nil
}

// recordKey is the key of a shared record's token: dpop_key, or the key
// kept in the record. It reports false when the record's token cannot be
// used with it (bound to another key, or a key that does not parse).
func (k *dpopKeys) recordKey(rec *tokenRecord) (*oauthclient.DPoPKey, bool) {
	if rec.TokenType != oauthclient.TokenTypeDPoP {
		return nil, true // unbound: sent as Bearer
	}
	key := k.configured
	if key == nil {
		if len(rec.DPoPKey) == 0 {
			return nil, false
		}
		var err error
		if key, err = k.stored(rec.DPoPKey); err != nil {
			return nil, false
		}
	}
	return key, key.Thumbprint() == rec.JKT
}

// keyForRecord is the key a token request for rec signs with, and the DER
// to keep in the record: dpop_key (nothing kept), the record's key, or a
// new one (made under the record's lock: readLockRead).
func (k *dpopKeys) keyForRecord(rec *tokenRecord) (*oauthclient.DPoPKey, []byte, error) {
	if k.configured != nil {
		return k.configured, nil, nil
	}
	if len(rec.DPoPKey) > 0 {
		if key, err := k.stored(rec.DPoPKey); err == nil {
			return key, rec.DPoPKey, nil
		}
	}
	key, der, err := newKeptDPoPKey()
	if err != nil {
		return nil, nil, err
	}
	k.env.logger().Info("made the DPoP key of the credential set; it is kept in the storage with the token",
		zap.String("provider", k.provider), zap.String("jkt", key.Thumbprint()))
	return key, der, nil
}

// newKeptDPoPKey makes a P-256 key to keep in a record (a credential set's
// token record, a grant's record), and the PKCS#8 DER to keep.
func newKeptDPoPKey() (*oauthclient.DPoPKey, []byte, error) {
	key, err := oauthclient.GenerateDPoPKey()
	if err != nil {
		return nil, nil, err
	}
	der, err := key.MarshalPKCS8()
	if err != nil {
		return nil, nil, err
	}
	return key, der, nil
}

// ownDER is the DER of a process's own key, to keep with a token bound to
// it when the storage takes it again; nil for dpop_key.
func (k *dpopKeys) ownDER(key *oauthclient.DPoPKey) []byte {
	if key == k.configured {
		return nil
	}
	der, _ := key.MarshalPKCS8()
	return der
}

// dpopView is what the admin API and check show of DPoP: public only.
type dpopView struct {
	BaseURL string `json:"base_url"`
	// JKT is the thumbprint of the key of the current token, or of
	// dpop_key.
	JKT string `json:"jkt,omitempty"`
	Key string `json:"key"` // dpop_key, storage or process
	// Bound: the current token is bound to the key (token_type DPoP);
	// false: the server answered a Bearer token.
	Bound bool `json:"bound"`
}

func describeDPoPKey(cs *credentialSet, shared bool) string {
	switch {
	case cs.dpopKey != nil:
		return "dpop_key"
	case shared:
		return "storage"
	}
	return "process"
}

// dpopView is the entry's DPoP as the admin API shows it; nil without dpop.
func (s *sourceEntry) dpopView(shared bool) *dpopView {
	cs := s.ep.cfg
	if cs.DPoP == "" {
		return nil
	}
	v := &dpopView{BaseURL: cs.DPoP, JKT: cs.DPoPJKT, Key: describeDPoPKey(cs, shared)}
	if t := s.src.cur.Load(); t != nil {
		v.JKT = ""
		if t.dpopKey != nil {
			v.JKT = t.dpopKey.Thumbprint()
		}
		v.Bound = t.dpopKey != nil
	}
	return v
}
