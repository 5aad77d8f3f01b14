package providers

// Keycloak, a realm of a server (base_url: where the server answers, with
// /auth at the end for versions before 17).
func init() {
	register(Provider{
		Name:  "keycloak",
		Title: "Keycloak",
		Params: []Param{
			{Name: "base_url", Required: true, Doc: "the server's URL, e.g. https://sso.example.com"},
			{Name: "realm", Required: true, Doc: "the realm"},
		},
		TokenURLTemplate:     "{base_url}/realms/{realm}/protocol/openid-connect/token",
		AuthorizeURLTemplate: "{base_url}/realms/{realm}/protocol/openid-connect/auth",
		RevokeURLTemplate:    "{base_url}/realms/{realm}/protocol/openid-connect/revoke",
		RequestFormat:        FormatForm,
		ClientAuth:           AuthBasic,
	})
}
