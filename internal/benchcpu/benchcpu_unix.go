//go:build unix

// Package benchcpu reports a benchmark's CPU time per operation, for the
// benchmarks of the root package and of internal/oauthclient.
package benchcpu

import (
	"syscall"
	"testing"
	"time"
)

// PerOp starts counting the process's CPU time (user and system, every
// thread's: the garbage collector's too); the function it returns, called
// after the benchmark's loop, reports it per operation as cpu-ns/op. On a
// shared machine a benchmark's ns/op counts the time it waited for a core;
// cpu-ns/op does not, so it is the figure to compare between runs there.
func PerOp(b *testing.B) func() {
	start := processCPU()
	return func() { b.ReportMetric(float64(processCPU()-start)/float64(b.N), "cpu-ns/op") }
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
