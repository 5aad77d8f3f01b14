package providers

// Microsoft Entra ID (Azure AD), v2.0 endpoints of a tenant. Client
// credentials ask for a resource's scope as "<resource>/.default"; Entra
// recommends certificate credentials (client_auth private_key_jwt with a
// private_key and its certificate: it finds the key by the x5t header).
func init() {
	register(Provider{
		Name:                 "entra",
		Title:                "Microsoft Entra ID",
		Params:               []Param{{Name: "tenant", Required: true, Doc: "the directory (tenant) id or a verified domain"}},
		TokenURLTemplate:     "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token",
		AuthorizeURLTemplate: "https://login.microsoftonline.com/{tenant}/oauth2/v2.0/authorize",
		RequestFormat:        FormatForm,
		ClientAuth:           AuthBody,
	})
}
