package oauthbearer

import (
	"context"
	"errors"
	"sync"
	"time"

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

	mu       sync.Mutex
	seen     uint64 // the last sequence number applied
	switches uint64 // the env's storage switches at the last look
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
// storage since the last look (or since the grant first had a storage,
// before its first look), every account in memory is read again, the
// accounts known to have no grant are forgotten, and the schedule looks at
// the stored grants again; after a switch, what was learnt from the old
// storage is forgotten first (grant.forgetStorage).
func (l *grantEventLog) watch(ctx context.Context) {
	g := l.g
	// The count of switches is taken before the read: a switch between
	// the two is seen again at the next look.
	switches := g.env.storageSwitches()
	var log grantEventsRecord
	if _, err := g.store.load(ctx, g.eventsKey(), &log); err != nil && !errors.Is(err, errUndecryptable) {
		g.env.logger().Debug("reading the grant's event log failed", zap.String("provider", g.cfg.Provider), zap.Error(err))
		return
	}
	l.mu.Lock()
	seen, switched := l.seen, l.switches != switches
	l.seen, l.switches = log.Seq, switches
	l.mu.Unlock()
	if switched {
		g.forgetStorage()
	}
	if log.Seq == seen && !switched {
		return
	}
	accounts := map[string]bool{}
	if switched || log.Seq < seen || len(log.Events) == 0 || log.Events[0].Seq > seen+1 {
		g.accounts.each(func(account string, _ *tokenSource) { accounts[account] = true })
		g.accounts.clearAllAbsent()
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
