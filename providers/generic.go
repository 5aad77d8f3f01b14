package providers

// Any standards-compliant OAuth 2.0 server (RFC 6749): form-encoded token
// requests, client_secret_basic, and a token_url the user must give.
func init() {
	register(Provider{
		Name:          Generic,
		Title:         "Generic OAuth 2.0 server",
		RequestFormat: FormatForm,
		ClientAuth:    AuthBasic,
	})
}
