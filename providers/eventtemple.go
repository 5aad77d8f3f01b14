package providers

// Event Temple runs Doorkeeper: JSON token requests with the client
// credentials in the body (Doorkeeper's Basic parser does not URL-decode),
// and every API call needs the organisation in X-API-ORG. Its authorize URL
// takes scopes joined with commas; refresh tokens rotate on every use.
func init() {
	register(Provider{
		Name:               "eventtemple",
		Title:              "Event Temple",
		Environments:       map[string]string{"production": "https://api.eventtemple.com/oauth/token"},
		DefaultEnvironment: "production",
		AuthorizeURL:       "https://client.eventtemple.com/oauth/authorize",
		RevokeURL:          "https://api.eventtemple.com/oauth/revoke",
		RequestFormat:      FormatJSON,
		ClientAuth:         AuthBody,
		OrgHeader:          "X-API-ORG",
		ScopeSeparator:     ",",
	})
}
