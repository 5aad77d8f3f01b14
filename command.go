package oauthbearer

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/oauthbearer/caddy-oauth-bearer/internal/oauthclient"
)

// command.go: `caddy oauth-bearer`, registered with Caddy's CLI so that it
// is in every binary that has the module.
//
//	caddy oauth-bearer check --config <file> [--adapter caddyfile] [--json]
//	caddy oauth-bearer status [--address <admin address>] [--json]

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "oauth-bearer",
		Usage: "check --config <file> [--adapter <name>] [--json] | status [--address <admin>] [--json]",
		Short: "Checks oauth_bearer credentials, and shows their tokens' state",
		Long: `
check loads a configuration without starting any server, finds every
credential set of its oauth_bearer and oauth_bearer_consent handlers, and
asks each provider once, in parallel, with the configured timeouts (never
through a running Caddy): a client_credentials token request, a JWT bearer
grant with a fresh assertion (what a running Caddy would send), or for a
grant a refresh with a placeholder refresh token, which a provider that
accepts the client answers invalid_grant. It prints the provider, the token
URL, the client id, the result (ok, or the OAuth error code and the provider's
description), the lifetime, the granted scope and the request format used.
It never prints a token. Exit status 0 only if every set is ok: usable in
CI and deploy scripts.

status asks a running Caddy's admin API (GET /oauth_bearer/sources) and
prints each credential set's token endpoint host and token state: valid
until when, the last error, the next attempt, for grants how many accounts
need consent, and a client certificate that failed to reload.
`,
		CobraFunc: func(cmd *cobra.Command) {
			check := &cobra.Command{
				Use:   "check --config <file> [--adapter <name>] [--json]",
				Short: "Asks each provider of a configuration for a token, once",
				RunE:  caddycmd.WrapCommandFuncForCobra(cmdCheck),
			}
			check.Flags().StringP("config", "c", "", "Configuration file (required)")
			check.Flags().StringP("adapter", "a", "", "Name of the config adapter (default: caddyfile for a Caddyfile)")
			check.Flags().Bool("json", false, "Print JSON")
			status := &cobra.Command{
				Use:   "status [--address <admin address>] [--json]",
				Short: "Shows the token state of a running Caddy",
				RunE:  caddycmd.WrapCommandFuncForCobra(cmdStatus),
			}
			status.Flags().String("address", "", "The address of the admin API (default: from --config, else localhost:2019)")
			status.Flags().StringP("config", "c", "", "Configuration file whose admin address to use")
			status.Flags().StringP("adapter", "a", "", "Name of the config adapter")
			status.Flags().Bool("json", false, "Print JSON")
			cmd.AddCommand(check, status)
		},
	})
}

// checkResult is one credential set's check. Never a token.
type checkResult struct {
	Provider    string  `json:"provider"`
	TokenURL    string  `json:"token_url"`
	ClientID    string  `json:"client_id"`
	Grant       string  `json:"grant"`
	OK          bool    `json:"ok"`
	Error       string  `json:"error,omitempty"`
	Description string  `json:"error_description,omitempty"`
	Lifetime    float64 `json:"lifetime_seconds,omitempty"`
	Scope       string  `json:"scope,omitempty"`
	Format      string  `json:"request_format"`
	Handlers    int     `json:"handlers"` // how many handlers use the set
	// DPoP: the base URL, and whether the token the check got is bound
	// (token_type DPoP) and to which key (its thumbprint).
	DPoP      string `json:"dpop,omitempty"`
	DPoPJKT   string `json:"dpop_jkt,omitempty"`
	DPoPBound bool   `json:"dpop_bound,omitempty"`
}

// checkPlaceholderRefreshToken is what a grant's check redeems: a provider
// that accepts the client refuses it with invalid_grant.
const checkPlaceholderRefreshToken = "caddy-oauth-bearer-check-placeholder"

func cmdCheck(fl caddycmd.Flags) (int, error) {
	configFile := fl.String("config")
	if configFile == "" {
		return caddy.ExitCodeFailedStartup, errors.New("--config is required")
	}
	cfgJSON, _, _, err := caddycmd.LoadConfig(configFile, fl.String("adapter"))
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	sets, err := credentialSetsOf(cfgJSON)
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if len(sets) == 0 {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("%s has no oauth_bearer or oauth_bearer_consent handler", configFile)
	}
	results := checkSets(context.Background(), sets)
	if fl.Bool("json") {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		enc.Encode(results)
	} else {
		printCheck(os.Stdout, results)
	}
	failed := 0
	for _, r := range results {
		if !r.OK {
			failed++
		}
	}
	if failed > 0 {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("%d of %d credential set(s) failed", failed, len(results))
	}
	return caddy.ExitCodeSuccess, nil
}

// foundSet is a distinct credential set of a configuration.
type foundSet struct {
	cs       *credentialSet
	grant    string
	handlers int
}

// credentialSetsOf finds the handlers of the module in a JSON
// configuration (in any route, however nested), checks and resolves them
// as Provision would (placeholders from this environment), and returns
// their distinct credential sets.
func credentialSetsOf(cfgJSON []byte) ([]*foundSet, error) {
	var doc any
	if err := json.Unmarshal(cfgJSON, &doc); err != nil {
		return nil, err
	}
	byKey := map[string]*foundSet{}
	var order []string
	var walkErr error
	repl := provisionReplacer()
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if name, _ := v["handler"].(string); name == "oauth_bearer" || name == "oauth_bearer_consent" {
				raw, _ := json.Marshal(v)
				cs, grant, err := resolveHandlerJSON(name, raw, repl)
				if err != nil && walkErr == nil {
					walkErr = fmt.Errorf("handler %s: %w", name, err)
				}
				if err == nil {
					key := cs.key()
					if _, ok := byKey[key]; !ok {
						byKey[key] = &foundSet{cs: cs, grant: grant}
						order = append(order, key)
					}
					byKey[key].handlers++
				}
			}
			for _, c := range v {
				walk(c)
			}
		case []any:
			for _, c := range v {
				walk(c)
			}
		}
	}
	walk(doc)
	if walkErr != nil {
		return nil, walkErr
	}
	out := make([]*foundSet, len(order))
	for i, k := range order {
		out[i] = byKey[k]
	}
	return out, nil
}

// resolveHandlerJSON checks and resolves one handler's JSON.
func resolveHandlerJSON(name string, raw []byte, repl *caddy.Replacer) (*credentialSet, string, error) {
	if name == "oauth_bearer_consent" {
		var h ConsentHandler
		if err := json.Unmarshal(raw, &h); err != nil {
			return nil, "", err
		}
		cs, err := h.configure(repl)
		return cs, grantAuthorizationCode, err
	}
	var h Handler
	if err := json.Unmarshal(raw, &h); err != nil {
		return nil, "", err
	}
	cs, err := h.configure(repl)
	return cs, h.grantType(), err
}

// checkSets asks each provider once, in parallel.
func checkSets(ctx context.Context, sets []*foundSet) []checkResult {
	results := make([]checkResult, len(sets))
	var wg sync.WaitGroup
	for i, s := range sets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = checkSet(ctx, s)
		}()
	}
	wg.Wait()
	return results
}

func checkSet(ctx context.Context, s *foundSet) checkResult {
	cs := s.cs
	r := checkResult{Provider: cs.Provider, TokenURL: cs.TokenURL, ClientID: cs.ClientID, Grant: s.grant, Handlers: s.handlers}
	ep := newEndpoint(cs, &clock{})
	defer ep.Close()
	var tok *token
	var err error
	switch {
	case machineGrant(s.grant) && cs.DPoP != "":
		// With dpop, the request carries a proof, as a running Caddy's
		// does: dpop_key, or a key made for the check (the stored key is
		// the running instances'; the check does not touch the storage).
		r.DPoP = cs.DPoP
		dk := &dpopKeys{configured: cs.dpopKey, provider: cs.Provider, env: &env{}}
		dk.bearerWarned.Store(true) // the result says it
		var key *oauthclient.DPoPKey
		if key = cs.dpopKey; key == nil {
			key, err = oauthclient.GenerateDPoPKey()
		}
		if err == nil {
			tok, err = dk.fetch(ctx, key, ep.ClientCredentials)
		}
		if err == nil {
			r.DPoPJKT, r.DPoPBound = key.Thumbprint(), tok.dpopKey != nil
		}
	case machineGrant(s.grant):
		// client_credentials, or the JWT bearer grant with a fresh
		// assertion: the very request a running Caddy makes.
		tok, err = fetched(ep.ClientCredentials(ctx))
	default:
		// With dpop, a grant's refresh carries a proof, as a running
		// Caddy's does (dpop_key, or a key made for the check): a server
		// that requires DPoP for the client then judges the placeholder
		// refresh token, not a missing proof.
		rctx := ctx
		if cs.DPoP != "" {
			key := cs.dpopKey
			if key == nil {
				key, err = oauthclient.GenerateDPoPKey()
			}
			rctx = oauthclient.WithDPoPKey(ctx, key)
		}
		if err == nil {
			tok, err = fetched(ep.Refresh(rctx, checkPlaceholderRefreshToken))
		}
	}
	r.Format = ep.Format()
	if r.TokenURL == "" {
		r.TokenURL = ep.KnownTokenURL() // discovered from the issuer by the request just made
	}
	var te *TokenError
	switch {
	case err == nil && machineGrant(s.grant):
		r.OK, r.Lifetime, r.Scope = true, tok.expiry.Sub(tok.obtained).Round(time.Second).Seconds(), tok.scope
	case err == nil:
		// A refresh token that does not exist was accepted: odd, but the
		// client was.
		r.OK = true
	case !machineGrant(s.grant) && errors.As(err, &te) && te.Code == "invalid_grant":
		r.OK, r.Description = true, "client accepted (the placeholder refresh token was refused with invalid_grant, as it should be)"
	case errors.As(err, &te):
		r.Error, r.Description = te.Code, te.Description
	default:
		r.Error, r.Description = "error", cs.redact(err.Error())
	}
	return r
}

func printCheck(w io.Writer, results []checkResult) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PROVIDER\tTOKEN URL\tCLIENT ID\tGRANT\tRESULT\tLIFETIME\tSCOPE\tFORMAT")
	failed := 0
	for _, r := range results {
		result := "ok"
		if !r.OK {
			failed++
			result = r.Error
			if r.Description != "" {
				result += ": " + truncate(r.Description, 100)
			}
		}
		lifetime := "-"
		if r.Lifetime > 0 {
			lifetime = (time.Duration(r.Lifetime) * time.Second).String()
		}
		if r.DPoP != "" && r.OK {
			result += " (dpop " + r.DPoP + ": "
			if r.DPoPBound {
				result += "bound, jkt " + r.DPoPJKT + ")"
			} else {
				result += "the server answered a Bearer token)"
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Provider, r.TokenURL, r.ClientID, r.Grant, result, lifetime,
			firstNonEmpty(r.Scope, "-"), r.Format)
	}
	tw.Flush()
	fmt.Fprintf(w, "\n%d credential set(s), %d ok, %d failed\n", len(results), len(results)-failed, failed)
}

func cmdStatus(fl caddycmd.Flags) (int, error) {
	addr, err := caddycmd.DetermineAdminAPIAddress(fl.String("address"), nil, fl.String("config"), fl.String("adapter"))
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	resp, err := caddycmd.AdminAPIRequest(addr, http.MethodGet, "/oauth_bearer/sources", nil, nil)
	if err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("asking the admin API at %s: %w", addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return caddy.ExitCodeFailedStartup, err
	}
	if fl.Bool("json") {
		os.Stdout.Write(body)
		return caddy.ExitCodeSuccess, nil
	}
	var sources []sourceView
	if err := json.Unmarshal(body, &sources); err != nil {
		return caddy.ExitCodeFailedStartup, fmt.Errorf("the admin API's answer is not a list of sources: %w", err)
	}
	printStatus(os.Stdout, sources, time.Now())
	return caddy.ExitCodeSuccess, nil
}

func printStatus(w io.Writer, sources []sourceView, now time.Time) {
	if len(sources) == 0 {
		fmt.Fprintln(w, "No oauth_bearer credential set is loaded.")
		return
	}
	sort.SliceStable(sources, func(i, j int) bool { return sources[i].Provider < sources[j].Provider })
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tPROVIDER\tTOKEN HOST\tCLIENT ID\tGRANT\tSTATE\tEXPIRES\tORIGIN\tLAST ERROR\tNEXT ATTEMPT\tACCOUNTS")
	for _, s := range sources {
		state, expires, origin := firstNonEmpty(s.State, "-"), "-", firstNonEmpty(s.Origin, "-")
		if s.ExpiresAt != nil {
			expires = "in " + s.ExpiresAt.Sub(now).Round(time.Second).String()
		}
		lastErr := "-"
		if s.LastError != nil {
			lastErr = fmt.Sprintf("%s (%s ago, %d in a row)", s.LastError.Code, now.Sub(s.LastError.At).Round(time.Second), s.ConsecutiveFailures)
		}
		next := "-"
		if s.NextAttempt != nil {
			next = "in " + s.NextAttempt.Sub(now).Round(time.Second).String()
		}
		accounts := "-"
		if s.Accounts != nil {
			accounts = fmt.Sprintf("%d, %d need consent", *s.Accounts, *s.AccountsNeedingConsent)
			state = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.ID, s.Provider, tokenHost(s), s.ClientID, s.Grant, state, expires,
			origin, lastErr, next, accounts)
	}
	tw.Flush()
	for _, s := range sources {
		if c := s.ClientCertificate; c != nil && c.ReloadError != "" {
			ago := "-"
			if c.ReloadFailingSince != nil {
				ago = now.Sub(*c.ReloadFailingSince).Round(time.Second).String()
			}
			fmt.Fprintf(w, "\n%s: the client certificate fails to reload (for %s): %s; the previous one (%s, valid until %s) is still presented\n",
				s.ID, ago, c.ReloadError, c.Subject, c.NotAfter.Format(time.RFC3339))
		}
	}
}

// tokenHost is the host of a set's token endpoint (of its issuer when the
// endpoint is discovered): what tells apart two sets of one provider, such
// as its sandbox and production.
func tokenHost(s sourceView) string {
	for _, raw := range []string{s.TokenURL, s.Issuer} {
		if u, err := url.Parse(raw); err == nil && u.Host != "" {
			return u.Host
		}
	}
	return "-"
}
