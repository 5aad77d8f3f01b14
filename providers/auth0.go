package providers

// Auth0, a tenant's domain (example.eu.auth0.com, or a custom domain).
// Machine-to-machine tokens usually need an audience (the API's
// identifier), and count against the tenant's quota.
func init() {
	register(Provider{
		Name:                 "auth0",
		Title:                "Auth0",
		Params:               []Param{{Name: "domain", Required: true, Doc: "the tenant's domain, e.g. example.eu.auth0.com"}},
		TokenURLTemplate:     "https://{domain}/oauth/token",
		AuthorizeURLTemplate: "https://{domain}/authorize",
		RevokeURLTemplate:    "https://{domain}/oauth/revoke",
		RequestFormat:        FormatForm,
		ClientAuth:           AuthBody,
	})
}
