package providers

// Okta, an org's domain and one of its authorization servers: "default"
// unless authorization_server names another (a custom server's id).
func init() {
	register(Provider{
		Name:  "okta",
		Title: "Okta",
		Params: []Param{
			{Name: "domain", Required: true, Doc: "the org's domain, e.g. example.okta.com"},
			{Name: "authorization_server", Default: "default", Doc: "the authorization server's id"},
		},
		TokenURLTemplate:     "https://{domain}/oauth2/{authorization_server}/v1/token",
		AuthorizeURLTemplate: "https://{domain}/oauth2/{authorization_server}/v1/authorize",
		RevokeURLTemplate:    "https://{domain}/oauth2/{authorization_server}/v1/revoke",
		RequestFormat:        FormatForm,
		ClientAuth:           AuthBasic,
	})
}
