package oauthbearer

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"strings"
	"sync"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
)

// replay.go: what the injector does when the upstream answers 401 to a
// token. With upstream_401 retry (the default) the request is sent with the
// token and its answer buffered only if it is a 401 that refuses the
// token; the token is then dropped (if old enough, see tokenSource.reject)
// and the request replayed once with a new one, when its body was small
// enough to keep.

// forward sends the request upstream with tok, handling an upstream 401.
func (h *Handler) forward(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, src *tokenSource, tok *token) error {
	var body []byte
	replayable := false
	// With dpop, a request is kept replayable for a nonce challenge
	// whatever upstream_401 says (a nonce is not a refused token).
	if h.Upstream401 != upstream401Invalidate || h.dpop != nil {
		var err error
		if body, replayable, err = h.bufferBody(r); err != nil {
			return caddyhttp.Error(http.StatusBadRequest, fmt.Errorf("reading request body: %w", err))
		}
	}
	var before *headerSnapshot
	if replayable {
		// The response header as it is before the upstream answers,
		// restored for a replay. Pooled: nearly every request discards it.
		before = snapshotPool.Get().(*headerSnapshot)
		before.take(w.Header())
		defer snapshotPool.Put(before)
	}
	buf := bufPool.Get().(*bytes.Buffer)
	buf.Reset()
	defer bufPool.Put(buf)
	shouldBuffer := tokenRejected
	if h.dpop != nil {
		shouldBuffer = h.dpop.shouldBuffer // also keeps the upstream's DPoP nonces
	}
	rec := caddyhttp.NewResponseRecorder(w, buf, shouldBuffer)

	h.inject(r, tok)
	err := next.ServeHTTP(rec, r)
	if err == nil && h.dpop != nil && rec.Buffered() {
		var done bool
		if rec, done, err = h.dpopNonceReplay(w, r, next, rec, buf, before, body, replayable, tok); done {
			return err
		}
	}
	if err != nil || !rec.Buffered() || rec.Status() != http.StatusUnauthorized {
		if err == nil {
			accepted(tok)
		}
		return err
	}

	// The upstream refused the token. A grant's source first takes a newer
	// stored token, whatever the refused one's age (tokensource.go).
	retry := src.takeNewer(r.Context(), tok) || src.reject(tok)
	log := h.logger.With(zap.String("provider", h.provider), zap.Duration("token_age", src.now().Sub(tok.obtained)))
	if h.Upstream401 == upstream401Invalidate {
		replayable = false // buffered for a DPoP nonce challenge only
	}
	if !retry || !replayable {
		action := "passed"
		if retry {
			action = "invalidated"
		}
		metrics.upstream401.WithLabelValues(h.provider, action).Inc()
		log.Warn("upstream refused the token", zap.String("action", action), zap.Bool("replayable", replayable))
		return rec.WriteResponse()
	}
	metrics.upstream401.WithLabelValues(h.provider, "retried").Inc()
	log.Info("upstream refused the token; retrying with a new one")
	for n := 1; ; n++ {
		before.restore(w.Header())
		if tok, err = src.Token(r.Context()); err != nil {
			return h.refuse(w, r, err)
		}
		rr := replayRequest(r)
		if body != nil {
			rr.Body = io.NopCloser(bytes.NewReader(body))
		}
		h.inject(rr, tok)
		// The replay's answer goes to the client as it comes, unless it
		// refuses the token and another replay may follow (buffered, as
		// the first attempt's); its status says whether the new token
		// was refused too (reject counts that).
		last := n >= maxReplays
		var replay caddyhttp.ResponseRecorder
		if last {
			replay = caddyhttp.NewResponseRecorder(w, nil, nil)
		} else {
			buf.Reset()
			replay = caddyhttp.NewResponseRecorder(w, buf, tokenRejected)
		}
		if err := next.ServeHTTP(replay, rr); err != nil {
			return err
		}
		if !tokenRejected(replay.Status(), w.Header()) {
			accepted(tok)
			if replay.Buffered() {
				return replay.WriteResponse()
			}
			return nil
		}
		// Refused again. A grant rotated again while the request waited
		// for the previous rotation (another instance's, whose lock is
		// polled): a token newer than the one just refused is stored, and
		// costs no redemption. Each replay carries a newer token than the
		// last, so this ends; maxReplays bounds it all the same.
		if !last && src.takeNewer(r.Context(), tok) {
			metrics.upstream401.WithLabelValues(h.provider, "retried").Inc()
			log.Info("upstream refused the new token too, which another rotation has replaced; retrying with the newest")
			continue
		}
		src.reject(tok)
		metrics.upstream401.WithLabelValues(h.provider, "replay_refused").Inc()
		log.Warn("upstream refused the new token too; the next one is fetched later")
		if replay.Buffered() {
			return replay.WriteResponse()
		}
		return nil
	}
}

// maxReplays bounds the replays of one request after upstream 401s: the
// first with a new token, the others only with a token stored since the
// last was refused (a grant that rotated again meanwhile, see forward).
const maxReplays = 3

// dpopNonceReplay handles a resource server's nonce challenge (RFC 9449
// §9) to a request rec buffered: the same token, a new proof with the
// nonce it just gave (kept by shouldBuffer), once, when the request can be
// replayed. done: the answer was written (the challenge passed on, or
// challenged again); else rec is the replay's, for the usual 401 rules.
func (h *Handler) dpopNonceReplay(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, rec caddyhttp.ResponseRecorder,
	buf *bytes.Buffer, before *headerSnapshot, body []byte, replayable bool, tok *token) (caddyhttp.ResponseRecorder, bool, error) {
	if _, ok := oauthclient.ResourceNonceChallenge(rec.Status(), w.Header()); !ok {
		return rec, false, nil
	}
	if !replayable {
		return rec, true, rec.WriteResponse()
	}
	before.restore(w.Header())
	rr := replayRequest(r)
	if body != nil {
		rr.Body = io.NopCloser(bytes.NewReader(body))
	}
	buf.Reset()
	rec = caddyhttp.NewResponseRecorder(w, buf, h.dpop.shouldBuffer)
	h.inject(rr, tok)
	if err := next.ServeHTTP(rec, rr); err != nil {
		return rec, true, err
	}
	if rec.Buffered() {
		if _, again := oauthclient.ResourceNonceChallenge(rec.Status(), w.Header()); again {
			return rec, true, rec.WriteResponse() // once only
		}
	}
	return rec, false, nil
}

// replayRequest is r for one more trip through next (a replay): the same
// request, with a context whose Caddy vars map is a copy of r's.
// reverse_proxy writes that map each time it is entered
// (caddyhttp.SetVar in prepareRequest, reverseproxy.go:925 in Caddy
// v2.11.9), and an attempt may leave behind a goroutine that still reads
// it: when the attempt found no idle connection, net/http's Transport
// dials one in a goroutine of its own, with the attempt's context (its
// values kept, net/http transport.go getConn), and goes on with whichever
// connection comes first; Caddy's dialer reads the vars map
// (httptransport.go:286, 307, 449) whenever that dial runs. A plain map
// read and written at once is a data race, and can be Go's fatal
// "concurrent map read and map write". The original map is only read
// after the first attempt (here, and by such a dial); the vars a replay
// sets stay on its copy: handle_errors and the access log see those of
// the first attempt (the same handlers set them), and the placeholders
// of the replay (Caddy's replacer is shared, and locked).
func replayRequest(r *http.Request) *http.Request {
	vars, ok := r.Context().Value(caddyhttp.VarsCtxKey).(map[string]any)
	if !ok {
		return r
	}
	return r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, maps.Clone(vars)))
}

// bufferBody makes the request body replayable when it is known to be
// small: no body, or one whose Content-Length is at most replay_max_body,
// is read into memory (the client promised exactly that many bytes). A body
// of unknown length (chunked, an HTTP/2 stream, gRPC) is never read before
// forwarding: it may be a conversation whose next part waits for the answer
// to this one. Neither is the body of an Upgrade request, whose connection
// becomes one. Those, and larger bodies, stream and are not replayable.
func (h *Handler) bufferBody(r *http.Request) ([]byte, bool, error) {
	// Content-Length 0 is a request without a body (an unknown length is
	// -1); reverse_proxy sends none then. Caddy wraps even http.NoBody in
	// a reader of its own, so reading it would cost every GET a 512-byte
	// buffer, two wrappers and a read that moves the connection's deadline.
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return nil, true, nil
	}
	limit := h.replayMax
	if limit < 0 || r.ContentLength < 0 || r.ContentLength > limit || r.Header.Get("Upgrade") != "" {
		return nil, false, nil
	}
	b := make([]byte, r.ContentLength)
	if _, err := io.ReadFull(r.Body, b); err != nil {
		return nil, false, err
	}
	r.Body = io.NopCloser(bytes.NewReader(b))
	return b, true, nil
}

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// headerSnapshot is a copy of a header whose map and value storage are
// reused from request to request (http.Header.Clone allocates both).
type headerSnapshot struct {
	hdr  http.Header
	vals []string
}

var snapshotPool = sync.Pool{New: func() any { return &headerSnapshot{hdr: make(http.Header)} }}

// take copies h.
func (s *headerSnapshot) take(h http.Header) {
	clear(s.hdr)
	s.vals = s.vals[:0]
	for k, vs := range h {
		n := len(s.vals)
		s.vals = append(s.vals, vs...)
		s.hdr[k] = s.vals[n:len(s.vals):len(s.vals)]
	}
}

// restore makes h what it was when take copied it. The values are copied
// out: the snapshot's storage goes back to the pool.
func (s *headerSnapshot) restore(h http.Header) {
	clear(h)
	for k, vs := range s.hdr {
		h[k] = append([]string(nil), vs...)
	}
}

// tokenRejected reports an upstream answer that refuses the token, as RFC
// 6750 §3.1 means it: a 401 with a Bearer challenge whose error is
// invalid_token, or a 401 with no challenge at all (a server that does not
// speak RFC 6750 says no more). A Bearer challenge without an error says
// that the request carried no credentials the server could use (the token
// went in a header it does not read, or was stripped on the way); other
// challenges (Basic, a Bearer invalid_request) and every 403
// (insufficient_scope) are not fixed by a new token either.
func tokenRejected(status int, hdr http.Header) bool {
	if status != http.StatusUnauthorized {
		return false
	}
	values := hdr.Values("Www-Authenticate")
	found := false
	for _, v := range values {
		for _, c := range oauthclient.ParseChallenges(v) {
			found = true
			// A DPoP challenge's invalid_token (RFC 9449 §7.1) refuses the
			// token as Bearer's does; its invalid_dpop_proof and
			// use_dpop_nonce are about the proof.
			if (strings.EqualFold(c.Scheme, "Bearer") || strings.EqualFold(c.Scheme, "DPoP")) && c.Params["error"] == "invalid_token" {
				return true
			}
		}
	}
	return !found
}
