package oauthclient

import "testing"

// What redactTokens takes out, and what it leaves for a person to read.
func TestRedactTokens(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"refresh_token=8xLOxBtZp8 is invalid", "refresh_token=[REDACTED] is invalid"},
		{`{"access_token": "abc.def", "x": 1}`, `{"access_token": "[REDACTED]", "x": 1}`},
		{"Authorization: Bearer ya29.a0AfH6SMBx3 was refused", "Authorization: Bearer [REDACTED] was refused"},
		{"Basic YXBwOnNlY3JldA== refused", "Basic [REDACTED] refused"},
		{"token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig_nature-1 expired", "token [REDACTED] expired"},
		{"key 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 unknown", "key [REDACTED] unknown"},
		{"opaque gho_16C7e42F292c6912E7710c838347Ae178B4a here", "opaque [REDACTED] here"},
		{"google 1//0gLzHvQ7wT3cUCgYIARAAGBASNwF-L9IrXk0aB4ZPq", "google [REDACTED]"},
		// Kept: prose, error codes, UUIDs, URLs and paths, short words.
		{"Bearer token required", "Bearer token required"},
		{"AADSTS700016: Application with identifier 'a0b1c2d3-e4f5-4a6b-8c9d-0e1f2a3b4c5d' was not found", "AADSTS700016: Application with identifier 'a0b1c2d3-e4f5-4a6b-8c9d-0e1f2a3b4c5d' was not found"},
		{"see https://login.example.com/realms/MyRealm2024/protocol/openid-connect/token", "see https://login.example.com/realms/MyRealm2024/protocol/openid-connect/token"},
		{"client_credentials_grant_is_not_allowed_here", "client_credentials_grant_is_not_allowed_here"},
		{"Timestamp: 2024-11-05 10:00:00Z", "Timestamp: 2024-11-05 10:00:00Z"},
		{"client_assertion_file: /tmp/TestAssertion3827461/001/token is empty", "client_assertion_file: /tmp/TestAssertion3827461/001/token is empty"},
		{"see https://api.example.com/v1/grants/AbCdEf0123456789GhIjKl/revoke", "see https://api.example.[REDACTED]"},
		{"std base64 QmFzZTY0U2VjcmV0VmFsdWUrV2l0aC9TbGFzaGVz/QW5k== end", "std base64 [REDACTED] end"},
	} {
		if got := redactTokens(tc.in); got != tc.want {
			t.Errorf("redactTokens(%q)\n got %q\nwant %q", tc.in, got, tc.want)
		}
	}
}
