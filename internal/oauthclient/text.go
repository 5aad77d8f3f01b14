package oauthclient

// Text that comes from elsewhere (a provider's error description, a
// transport error, a discovery document) as an error, a log line or a page
// may hold it, and the rule of which endpoints may carry credentials.

import (
	"encoding/json"
	"net"
	"net/url"
	"regexp"
	"strings"
	"unicode/utf8"
)

// Redact removes secret (the client secret; ignored when shorter than 4
// bytes) and anything token-shaped from text that came from elsewhere (a
// provider's error description, a transport error, a discovery document)
// and makes it one short printable line. It runs where such text enters:
// what it returns may be logged, stored (a grant's reason, a remembered
// refusal) and shown (status, the accounts page, the admin API).
func Redact(secret, s string) string {
	if len(secret) >= 4 {
		// As sent, and as a form or a JSON body would echo it back.
		for _, v := range []string{secret, url.QueryEscape(secret), jsonEscape(secret)} {
			s = strings.ReplaceAll(s, v, "[REDACTED]")
		}
	}
	return redactText(s)
}

// redactText removes anything token-shaped from text and makes it one
// short printable line.
func redactText(s string) string {
	return Truncate(strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, redactTokens(s)), 300)
}

const redacted = "[REDACTED]"

var (
	// credentialValue: the value after a credential's name (access_token=,
	// "refresh_token": "…", client_secret: …) or an Authorization scheme.
	credentialValue = regexp.MustCompile(`(?i)(\b(?:access_token|refresh_token|id_token|client_secret|client_assertion|assertion|code_verifier|password)["']?\s*[=:]\s*["']?|\b(?:bearer|basic|dpop)\s+)([^\s"'&,;()<>\[\]{}]+)`)
	// jwtLike: a compact JWS or JWE (its header is base64url JSON).
	jwtLike = regexp.MustCompile(`\beyJ[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){2,4}`)
	// tokenRun: a run of base64, base64url or hex characters.
	tokenRun = regexp.MustCompile(`[A-Za-z0-9_\-+/=~]{20,}`)
)

// redactTokens replaces what looks like a token, a key or a secret with
// [REDACTED]: the value after access_token=, refresh_token=, Bearer and the
// like; a JWT; a run of 20 or more base64 or hex characters that mixes
// upper and lower case letters and digits (random material; words,
// paths, URLs and UUIDs do not), or holds 32 or more hex digits in a row
// (a hash, a key). Short error codes, UUIDs (trace and correlation ids),
// file paths and the paths of URLs stay.
func redactTokens(s string) string {
	s = credentialValue.ReplaceAllStringFunc(s, func(m string) string {
		sub := credentialValue.FindStringSubmatch(m)
		v := sub[2]
		if strings.HasPrefix(strings.ToLower(sub[1]), "b") || strings.HasPrefix(strings.ToLower(sub[1]), "d") {
			// After an Authorization scheme: only a value, not a word of
			// prose ("Bearer token required").
			if len(v) < 8 || strings.ToLower(v) == v && !strings.ContainsAny(v, "0123456789-._~+/=") {
				return m
			}
		}
		return sub[1] + redacted
	})
	s = jwtLike.ReplaceAllString(s, redacted)
	return tokenRun.ReplaceAllStringFunc(s, func(run string) string {
		if run == redacted {
			return run
		}
		if !strings.Contains(run, "/") || strings.ContainsAny(run, "+=") {
			if randomLooking(run) {
				return redacted
			}
			return run
		}
		// With slashes and nothing else of base64: a path (an absolute
		// file path, as local errors name files, stays whole), unless a
		// part of it is long random material (Google's 1//0g… refresh
		// tokens, a token in a URL's path).
		if strings.HasPrefix(run, "/") && !strings.HasPrefix(run, "//") {
			return run
		}
		for part := range strings.SplitSeq(run, "/") {
			if len(part) >= 16 && randomLooking(part) {
				return redacted
			}
		}
		return run
	})
}

// randomLooking reports whether a run of token characters looks like
// random material: upper and lower case letters and digits mixed, or 32 or
// more hex digits in a row.
func randomLooking(run string) bool {
	var upper, lower, digit bool
	hexRun, maxHex := 0, 0
	for i := 0; i < len(run); i++ {
		c := run[i]
		switch {
		case 'A' <= c && c <= 'Z':
			upper = true
		case 'a' <= c && c <= 'z':
			lower = true
		case '0' <= c && c <= '9':
			digit = true
		}
		if '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' {
			hexRun++
			maxHex = max(maxHex, hexRun)
		} else {
			hexRun = 0
		}
	}
	return upper && lower && digit || maxHex >= 32
}

func jsonEscape(s string) string {
	b, _ := json.Marshal(s)
	return string(b[1 : len(b)-1])
}

// Truncate shortens s to at most n bytes, on a rune boundary, marking the
// cut with "…".
func Truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…"
}

// SecureEndpoint reports whether u may carry credentials: https, or http to
// a loopback host (a test server, or a sidecar on this machine).
func SecureEndpoint(u *url.URL) bool {
	switch strings.ToLower(u.Scheme) {
	case "https":
		return true
	case "http":
		return IsLoopback(u.Hostname())
	}
	return false
}

// IsLoopback reports whether host names this machine: localhost (or a
// name under .localhost) or a loopback address.
func IsLoopback(host string) bool {
	host = strings.ToLower(host)
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	if ip := net.ParseIP(host); ip != nil {
		return ip.IsLoopback()
	}
	return false
}
