package providers

// Bookable uses Auth0: JSON token requests that must carry the API audience,
// production and sandbox tenants, and tokens re-fetched 60 s before expiry
// (the handler's default refresh_before, as Bookable asks). Auth0 counts
// every machine-to-machine token against the customer's quota, which is why
// the token is cached and shared.
func init() {
	register(Provider{
		Name:  "bookable",
		Title: "Bookable",
		Environments: map[string]string{
			"production": "https://auth.bookabletech.com/oauth/token",
			"sandbox":    "https://auth-sandbox.bookabletech.com/oauth/token",
		},
		DefaultEnvironment: "production",
		RequestFormat:      FormatJSON,
		ClientAuth:         AuthBody,
		Audience:           "api.bookabletech.com",
		RequiresAudience:   true,
	})
}
