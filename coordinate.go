package oauthbearer

import (
	"context"
	"time"
)

// coordinate.go: how the instances that share a storage do a costly thing
// (a token request, a redemption) once. Client-credentials tokens
// (sharedtoken.go) and grants (grantrefresh.go, grantrecords.go) both go
// through readLockRead.

// lockMargin is what a lock holder may take besides its request to the
// provider: reading and writing the record (a slow storage), and the
// storage noticing the release late (file_system polls its locks once a
// second).
const lockMargin = 10 * time.Second

// lockWait is how long an instance waits for a lock that another instance
// holds while it asks a provider whose requests are bounded by timeout: as
// long as the holder may legitimately work. A lock held longer has
// outlived its holder (a dead instance's, before the storage declares it
// stale: 10 s for file_system) or the storage misbehaves; then the waiter
// falls back.
func lockWait(timeout time.Duration) time.Duration { return timeout + lockMargin }

// StorageError is a failure of the shared storage: a read, a write, or a
// lock not obtained.
type StorageError struct {
	Provider string
	Doing    string // what failed, e.g. "reading the grant"
	Err      error
}

func (e *StorageError) Error() string {
	return e.Provider + ": storage failed " + e.Doing + ": " + truncate(e.Err.Error(), 200)
}

func (e *StorageError) Unwrap() error { return e.Err }

// readLockRead does work at most once across the instances sharing the
// storage, for each state of a shared record:
//
//  1. read the record, without a lock; when settle finds what it needs in
//     it (another instance did the work already), that is the answer;
//  2. otherwise take the lock, waiting at most wait (see lockWait);
//  3. read again (the holder may have finished while this instance
//     waited) and settle again;
//  4. only then work, holding the lock; release it.
//
// read reports its own errors (a *StorageError for the storage's). A lock
// not obtained is a *StorageError. With an error, the last record read is
// returned too (the zero R when there was none), so that a caller that can
// do without the storage falls back with what it knows.
func readLockRead[R, T any](ctx context.Context, s *recordStore, provider, lock string, wait time.Duration,
	read func(context.Context) (R, error), settle func(R) (T, bool, error), work func(context.Context, R) (T, error)) (T, R, error) {
	var zero T
	rec, err := read(ctx)
	if err != nil {
		return zero, rec, err
	}
	if t, done, err := settle(rec); done || err != nil {
		return t, rec, err
	}
	unlock, err := s.lock(ctx, lock, wait)
	if err != nil {
		return zero, rec, &StorageError{Provider: provider, Doing: "taking the lock", Err: err}
	}
	defer unlock()
	if rec, err = read(ctx); err != nil {
		return zero, rec, err
	}
	if t, done, err := settle(rec); done || err != nil {
		return t, rec, err
	}
	t, err := work(ctx, rec)
	return t, rec, err
}
