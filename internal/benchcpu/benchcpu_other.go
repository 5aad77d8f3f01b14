//go:build !unix

// Package benchcpu reports a benchmark's CPU time per operation, for the
// benchmarks of the root package and of internal/oauthclient.
package benchcpu

import "testing"

// PerOp reports nothing where getrusage is missing (benchcpu_unix.go).
func PerOp(b *testing.B) func() { return func() {} }
