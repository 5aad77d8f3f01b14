package oauthclient

// Recognising DPoP challenges: a token endpoint's 400 use_dpop_nonce
// (RFC 9449 §8) and a resource server's 401 with a DPoP challenge (§7.1,
// §9), and the WWW-Authenticate parser they (and the root package's
// upstream 401 rules, replay.go) use.

import (
	"encoding/json"
	"net/http"
	"strings"
)

// ErrUseDPoPNonce is the OAuth error code of a nonce challenge.
const ErrUseDPoPNonce = "use_dpop_nonce"

// TokenNonceChallenge reports whether an authorization server's answer
// (from its token endpoint, or its pushed authorization request endpoint) is
// a nonce challenge, RFC 9449 §8: status 400, error use_dpop_nonce in the
// JSON body, and a valid nonce in DPoP-Nonce. It returns the nonce; the
// request is to be sent again, once, with a proof that carries it.
func TokenNonceChallenge(status int, h http.Header, body []byte) (nonce string, ok bool) {
	if status != http.StatusBadRequest {
		return "", false
	}
	nonce = h.Get(DPoPNonceHeader)
	if !ValidNonce(nonce) {
		return "", false
	}
	var e struct {
		Error string `json:"error"`
	}
	if json.Unmarshal(body, &e) != nil || e.Error != ErrUseDPoPNonce {
		return "", false
	}
	return nonce, true
}

// ResourceNonceChallenge reports whether a resource server's answer is a
// nonce challenge, RFC 9449 §9: status 401, a DPoP challenge with
// error="use_dpop_nonce" in WWW-Authenticate, and a valid nonce in
// DPoP-Nonce. It returns the nonce; the request may be replayed once with a
// proof that carries it.
func ResourceNonceChallenge(status int, h http.Header) (nonce string, ok bool) {
	if status != http.StatusUnauthorized {
		return "", false
	}
	nonce = h.Get(DPoPNonceHeader)
	if !ValidNonce(nonce) {
		return "", false
	}
	if code, _ := DPoPChallengeError(h); code != ErrUseDPoPNonce {
		return "", false
	}
	return nonce, true
}

// DPoPChallengeError returns the error parameter of the first DPoP
// challenge in h's WWW-Authenticate fields (empty if it has none), and
// whether there is a DPoP challenge at all. A 401 whose DPoP error is not
// use_dpop_nonce (invalid_dpop_proof, invalid_token) is an ordinary refusal.
func DPoPChallengeError(h http.Header) (code string, ok bool) {
	for _, v := range h.Values("Www-Authenticate") {
		for _, c := range ParseChallenges(v) {
			if strings.EqualFold(c.Scheme, "DPoP") {
				return c.Params["error"], true
			}
		}
	}
	return "", false
}

// Challenge is one challenge of a WWW-Authenticate field.
type Challenge struct {
	Scheme  string            // as sent; compare it without regard to case
	Token68 string            // a token68 instead of parameters
	Params  map[string]string // names in lower case; quoted values unquoted
}

// ParseChallenges parses a WWW-Authenticate field value (RFC 9110
// §11.6.1), a comma-separated list in which commas separate both
// challenges and the parameters of one:
//
//	challenge  = auth-scheme [ 1*SP ( token68 / #auth-param ) ]
//	auth-param = token BWS "=" BWS ( token / quoted-string )
//
// It returns the challenges parsed before anything malformed.
func ParseChallenges(v string) []Challenge {
	p := &challengeParser{s: v}
	var out []Challenge
	for {
		p.skipListSeparators()
		if p.done() {
			return out
		}
		scheme := p.token()
		if scheme == "" {
			return out
		}
		c := Challenge{Scheme: scheme, Params: map[string]string{}}
		if p.skipSpaces() > 0 && !p.done() && p.peek() != ',' {
			if name, val, ok := p.authParam(); ok {
				c.Params[strings.ToLower(name)] = val
				p.moreParams(c.Params)
			} else if t68 := p.token68(); t68 != "" {
				c.Token68 = t68
			} else {
				return append(out, c)
			}
		}
		out = append(out, c)
		p.skipSpaces()
		if !p.done() && p.peek() != ',' {
			return out // malformed
		}
	}
}

type challengeParser struct {
	s string
	i int
}

func (p *challengeParser) done() bool { return p.i >= len(p.s) }
func (p *challengeParser) peek() byte { return p.s[p.i] }

func (p *challengeParser) skipSpaces() int {
	n := 0
	for !p.done() && (p.peek() == ' ' || p.peek() == '\t') {
		p.i++
		n++
	}
	return n
}

func (p *challengeParser) skipListSeparators() {
	for !p.done() && (p.peek() == ' ' || p.peek() == '\t' || p.peek() == ',') {
		p.i++
	}
}

// token reads an RFC 9110 token.
func (p *challengeParser) token() string {
	start := p.i
	for !p.done() && isTokenChar(p.peek()) {
		p.i++
	}
	return p.s[start:p.i]
}

// authParam reads name BWS "=" BWS value; on failure nothing is consumed.
func (p *challengeParser) authParam() (string, string, bool) {
	start := p.i
	name := p.token()
	p.skipSpaces()
	if name == "" || p.done() || p.peek() != '=' {
		p.i = start
		return "", "", false
	}
	p.i++
	p.skipSpaces()
	if p.done() {
		p.i = start
		return "", "", false
	}
	if p.peek() == '"' {
		if val, ok := p.quoted(); ok {
			return name, val, true
		}
	} else if val := p.token(); val != "" {
		return name, val, true
	}
	p.i = start // token68 such as "abc==" ends up here
	return "", "", false
}

// moreParams reads the auth-params after the first one: each follows a
// comma; a comma followed by something that is not name= starts the next
// challenge.
func (p *challengeParser) moreParams(params map[string]string) {
	for {
		save := p.i
		p.skipSpaces()
		if p.done() || p.peek() != ',' {
			p.i = save
			return
		}
		p.skipListSeparators()
		name, val, ok := p.authParam()
		if !ok {
			p.i = save
			return
		}
		params[strings.ToLower(name)] = val
	}
}

// quoted reads a quoted-string, undoing quoted-pairs.
func (p *challengeParser) quoted() (string, bool) {
	var b strings.Builder
	for p.i++; !p.done(); p.i++ {
		switch c := p.peek(); c {
		case '"':
			p.i++
			return b.String(), true
		case '\\':
			p.i++
			if p.done() {
				return "", false
			}
			b.WriteByte(p.peek())
		default:
			b.WriteByte(c)
		}
	}
	return "", false
}

// token68 reads 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=".
func (p *challengeParser) token68() string {
	start := p.i
	for !p.done() {
		c := p.peek()
		if !(isAlnum(c) || strings.IndexByte("-._~+/", c) >= 0) {
			break
		}
		p.i++
	}
	if p.i == start {
		return ""
	}
	for !p.done() && p.peek() == '=' {
		p.i++
	}
	return p.s[start:p.i]
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func isTokenChar(c byte) bool {
	return isAlnum(c) || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}
