package providers

// Google service accounts: the JWT bearer grant (RFC 7523), an assertion
// signed with the key of a service account key file (service_account_file:
// client_email, private_key, private_key_id, token_uri), with the scopes as
// a claim. No client secret.
func init() {
	register(Provider{
		Name:               "google",
		Title:              "Google",
		Environments:       map[string]string{"production": "https://oauth2.googleapis.com/token"},
		DefaultEnvironment: "production",
		RequestFormat:      FormatForm,
		ClientAuth:         AuthNone,
		Grant:              GrantJWTBearer,
	})
}
