package providers

// A Cal.com-style code-grant API: the person consents at app.cal.com, the
// token endpoint redeems the code (redirect_uri must match exactly), and a
// separate endpoint refreshes, taking the refresh token as a bearer
// credential in newer versions (sent in the body too, for older ones).
// Token responses carry no expires_in: the access token is a JWT whose exp
// schedules the refresh. Errors are {"message": ...}, not RFC 6749.
func init() {
	register(Provider{
		Name:               "calcom",
		Title:              "Cal.com",
		Environments:       map[string]string{"production": "https://app.cal.com/api/auth/oauth/token"},
		DefaultEnvironment: "production",
		AuthorizeURL:       "https://app.cal.com/auth/oauth2/authorize",
		RefreshURL:         "https://app.cal.com/api/auth/oauth/refreshToken",
		RefreshBearer:      true,
		RequestFormat:      FormatJSON,
		ClientAuth:         AuthBody,
	})
}
