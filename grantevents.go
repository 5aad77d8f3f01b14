package oauthbearer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// grantevents.go: the event log of a grant, a small record beside its
// accounts' grants listing the last connects, disconnects and refusals
// (invalid_grant), so that every instance sharing the storage applies them
// within about watchInterval: the account's source in memory takes the
// stored token or none, the instance that looks after the account in the
// background reads it again, and an account remembered as missing is
// forgotten.

// maxEvents is how many events the log keeps.
const maxEvents = 1000

// grantEventsRecord is the stored log.
type grantEventsRecord struct {
	Seq    uint64       `json:"seq"`
	Events []grantEvent `json:"events"`
}

type grantEvent struct {
	Seq     uint64    `json:"seq"`
	Account string    `json:"account"`
	At      time.Time `json:"at"`
}

// grantEventLog reads and writes the log. Its lock guards what this
// instance has seen of it.
type grantEventLog struct {
	g *grant

	mu      sync.Mutex
	seen    uint64 // the last sequence number applied
	watched string // the storage the log was last read from
}

func (g *grant) eventsKey() string { return "oauth_bearer/grants/" + g.id + "/_events.json" }

// lastSeen is the last sequence number this instance applied.
func (l *grantEventLog) lastSeen() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.seen
}

// publish appends a change of account to the log.
func (l *grantEventLog) publish(ctx context.Context, account string) {
	g := l.g
	err := func() error {
		unlock, err := g.store.lock(ctx, g.lockName("_events"), lockWait(0))
		if err != nil {
			return err
		}
		defer unlock()
		var log grantEventsRecord
		if _, err := g.store.load(ctx, g.eventsKey(), &log); err != nil && !errors.Is(err, errUndecryptable) {
			return err
		}
		log.Seq++
		log.Events = append(log.Events, grantEvent{Seq: log.Seq, Account: account, At: g.now()})
		if len(log.Events) > maxEvents {
			log.Events = log.Events[len(log.Events)-maxEvents:]
		}
		return g.store.save(ctx, g.eventsKey(), &log)
	}()
	if err != nil {
		g.env.logger().Warn("recording a consent change for the other instances failed; they see it at their next refresh",
			zap.String("provider", g.cfg.Provider), zap.String("account", account), zap.Error(err))
	}
}

// watch applies the changes made since the last look (on any instance,
// this one included). When events were missed (the log was trimmed past
// what this instance saw), or the configuration switched to another
// storage, every account in memory is read again and the schedule looks at
// the stored grants again.
func (l *grantEventLog) watch(ctx context.Context) {
	g := l.g
	var log grantEventsRecord
	if _, err := g.store.load(ctx, g.eventsKey(), &log); err != nil && !errors.Is(err, errUndecryptable) {
		g.env.logger().Debug("reading the grant's event log failed", zap.String("provider", g.cfg.Provider), zap.Error(err))
		return
	}
	storage := storageName(g.env.storage())
	l.mu.Lock()
	seen, first := l.seen, l.watched == ""
	switched := !first && l.watched != storage
	l.seen, l.watched = log.Seq, storage
	l.mu.Unlock()
	if log.Seq == seen && !switched {
		return
	}
	accounts := map[string]bool{}
	if switched || log.Seq < seen || len(log.Events) == 0 || log.Events[0].Seq > seen+1 {
		g.accounts.each(func(account string, _ *tokenSource) { accounts[account] = true })
		g.schedule.rescan(switched)
	}
	for _, ev := range log.Events {
		if ev.Seq > seen {
			accounts[ev.Account] = true
		}
	}
	for account := range accounts {
		if ctx.Err() != nil {
			return
		}
		g.accounts.clearAbsent(account)
		if g.accounts.loaded(account) == nil && !g.schedule.owns(account) {
			continue // nothing here depends on it
		}
		rec, err := g.records.current(ctx, account)
		var se *StorageError
		if errors.As(err, &se) {
			continue // the next request or refresh finds out
		}
		g.changed(account, rec)
	}
}

// storageName tells storages apart: a new configuration makes a new
// storage value even when it names the same place, so one that can say
// where it is (file_system: its path) is known by that.
func storageName(s certmagic.Storage) string {
	if str, ok := s.(fmt.Stringer); ok {
		return fmt.Sprintf("%T %s", s, str.String())
	}
	return fmt.Sprintf("%T %p", s, s)
}
