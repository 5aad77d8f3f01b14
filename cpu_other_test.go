//go:build !unix

package oauthbearer

import "testing"

// cpuPerOp reports nothing where getrusage is missing (cpu_unix_test.go).
func cpuPerOp(b *testing.B) func() { return func() {} }
