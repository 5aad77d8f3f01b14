package providers

// EventBookings runs an IdentityServer at /connect/token. Its docs show JSON
// token requests, but stock IdentityServer accepts only form bodies and
// answers 400 invalid_request to JSON. The preset therefore sends JSON first,
// as documented, and falls back to form once if the server refuses it; the
// format that worked is remembered. `request_format json` or `form` pins one.
func init() {
	register(Provider{
		Name:               "eventbookings",
		Title:              "EventBookings",
		Environments:       map[string]string{"production": "https://identity.eventbookings.com/connect/token"},
		DefaultEnvironment: "production",
		RequestFormat:      FormatAuto,
		PreferredFormat:    FormatJSON,
		ClientAuth:         AuthBody,
	})
}
