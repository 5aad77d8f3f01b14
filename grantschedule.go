package oauthbearer

import (
	"container/heap"
	"context"
	"errors"
	"hash/fnv"
	"io/fs"
	"math/rand/v2"
	"path"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// grantschedule.go: the background refresh of the grants no request uses,
// so that refresh tokens that expire when unused stay alive and status
// stays true.
//
// The instances that share the storage share the accounts out. Each writes
// a heartbeat record (every heartbeatInterval) and reads the others'; an
// account is looked after by the live instance that rendezvous hashing
// picks for it. So a grant costs the fleet the same storage operations
// whatever its number of instances, and each keeps only its share in
// memory. An instance that stops leaves (its record is deleted); one that
// dies is dropped by the others after memberTimeout without a heartbeat,
// and its accounts are shared out again. The request path does not depend
// on this: a source refreshes the account it serves on its own.
//
// Each account looked after here is refreshed at a random point of its
// refresh window (the window a source refreshes in), or, when that window
// has passed (the fleet was down or starting), at a random point of the
// next half of the time between two refreshes, so that a fleet coming back
// does not redeem every grant at once. A failure backs off per account (exponential with full jitter,
// a provider's Retry-After honoured), and is logged once per change of
// state, not per try. Refreshes run in up to refreshWorkers goroutines,
// off the grant's loop.

const (
	heartbeatInterval = 10 * time.Second
	// memberTimeout: an instance whose heartbeat has not changed for this
	// long is taken for dead.
	memberTimeout = 3 * heartbeatInterval
	// memberForgotten: a heartbeat record unchanged for this long is
	// deleted (its instance died without leaving).
	memberForgotten = 10 * memberTimeout
	// rescanInterval: how often the list of stored grants is read again
	// (between, connects are learnt from the event log).
	rescanInterval = 10 * time.Minute
	// refreshWorkers bounds the background refreshes in flight.
	refreshWorkers = 16
)

// memberRecord is an instance's heartbeat.
type memberRecord struct {
	Member       string `json:"member"`
	Seq          uint64 `json:"seq"`
	Accounts     int    `json:"accounts"`      // accounts it looks after
	NeedsConsent int    `json:"needs_consent"` // of which need consent
}

// peer is another instance as seen from here.
type peer struct {
	seq          uint64
	changed      time.Time // when its seq last changed, by this instance's clock
	accounts     int
	needsConsent int
}

// Account states in the schedule.
const (
	stateConnected = iota
	stateNeedsConsent
	stateFinal // no refresh token: nothing to refresh
)

// dueEntry is an account looked after here.
type dueEntry struct {
	account  string
	obtained time.Time
	expiry   time.Time // of the stored access token; zero: none
	state    int
	at       time.Time // the next refresh (or retry); in the heap when idx >= 0
	idx      int
	busy     bool   // a worker refreshes it
	late     bool   // planned after its window had passed
	failures int    // consecutive failed refreshes
	failing  string // the error code of the current failures, "" when fine
}

// dueHeap orders the entries by at.
type dueHeap []*dueEntry

func (h dueHeap) Len() int           { return len(h) }
func (h dueHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h dueHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i]; h[i].idx = i; h[j].idx = j }
func (h *dueHeap) Push(x any)        { e := x.(*dueEntry); e.idx = len(*h); *h = append(*h, e) }
func (h *dueHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	e.idx = -1
	return e
}

// grantSchedule is a grant's background refresh. Its lock guards the
// membership and the entries.
type grantSchedule struct {
	g    *grant
	self string // this instance's member id

	mu        sync.Mutex
	seq       uint64
	peers     map[string]*peer // other live or recently seen instances
	members   []string         // the live ones and self, sorted
	beats     int              // heartbeats written
	entries   map[string]*dueEntry
	due       dueHeap
	running   int
	needScan  bool
	scanning  bool
	scannedAt time.Time
	wake      chan struct{}
}

func newGrantSchedule(g *grant) *grantSchedule {
	s := &grantSchedule{g: g, self: randomID(8), peers: map[string]*peer{}, entries: map[string]*dueEntry{},
		needScan: true, wake: make(chan struct{}, 1)}
	s.members = []string{s.self}
	return s
}

func (g *grant) membersDir() string { return "oauth_bearer/grants/" + g.id + "/_members" }

// ---- ownership ----

// ownerScore ranks member for account (rendezvous hashing): the same on
// every instance. FNV-1a alone leaves its high bits to the first bytes
// (the member), so that one member would win most accounts; the
// finalizer of MurmurHash3 mixes every bit into every other.
func ownerScore(member, account string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(member))
	h.Write([]byte{0})
	h.Write([]byte(account))
	x := h.Sum64()
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	x *= 0xc4ceb9fe1a85ec53
	x ^= x >> 33
	return x
}

// ownsLocked reports whether this instance looks after account.
func (s *grantSchedule) ownsLocked(account string) bool {
	best, bestScore := "", uint64(0)
	for _, m := range s.members {
		if sc := ownerScore(m, account); best == "" || sc > bestScore || (sc == bestScore && m < best) {
			best, bestScore = m, sc
		}
	}
	return best == s.self
}

// owns reports whether this instance looks after account.
func (s *grantSchedule) owns(account string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ownsLocked(account)
}

// ---- what the other parts tell the schedule ----

// learned notes an account's grant as this instance read or wrote it (nil:
// none): it is scheduled if this instance looks after it.
func (s *grantSchedule) learned(account string, rec *grantRecord) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[account]
	if rec == nil {
		if e != nil {
			s.removeLocked(e)
		}
		return
	}
	if e == nil {
		if !s.ownsLocked(account) {
			return
		}
		e = &dueEntry{account: account, idx: -1}
		s.entries[account] = e
	}
	// A failing account keeps its backoff until its grant changes.
	backingOff := e.failures > 0 && !rec.Expiry.After(e.expiry) && !rec.NeedsConsent
	e.obtained, e.expiry = rec.Obtained, rec.Expiry
	switch {
	case rec.NeedsConsent:
		e.state = stateNeedsConsent
	case rec.RefreshToken == "" && !rec.seed:
		e.state = stateFinal
	default:
		e.state = stateConnected
	}
	if e.expiry.IsZero() {
		e.obtained = time.Time{}
	}
	if !backingOff && !e.busy {
		s.planLocked(e)
	}
}

// sawToken notes the token a refresh of account took from the storage
// (another route or instance refreshed it).
func (s *grantSchedule) sawToken(account string, t *token) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.entries[account]
	if e == nil || e.busy || !t.expiry.After(e.expiry) {
		return
	}
	e.obtained, e.expiry = t.obtained, t.expiry
	if e.state == stateConnected {
		s.planLocked(e)
	}
}

// rescan makes the schedule read the list of stored grants again; when
// the storage changed, it forgets what it knew first.
func (s *grantSchedule) rescan(switched bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.needScan = true
	if switched {
		for _, e := range s.entries {
			s.removeLocked(e)
		}
		clear(s.peers)
		s.members = []string{s.self}
	}
}

func (s *grantSchedule) removeLocked(e *dueEntry) {
	if e.idx >= 0 {
		heap.Remove(&s.due, e.idx)
	}
	delete(s.entries, e.account)
}

// planLocked sets when an entry is refreshed next (no failure pending).
// After a late refresh (the account was overdue, or failing), the next one
// comes at a random point of the half period before its window instead:
// the accounts a restart or an outage bunched together spread out again,
// at the cost of one early refresh each, instead of coming back together
// at every rotation.
func (s *grantSchedule) planLocked(e *dueEntry) {
	s.planAfterLocked(e, false)
}

func (s *grantSchedule) planAfterLocked(e *dueEntry, spread bool) {
	if e.idx >= 0 {
		heap.Remove(&s.due, e.idx)
	}
	if e.state != stateConnected {
		return
	}
	now := s.g.now()
	life := e.expiry.Sub(e.obtained)
	w := refreshWindow(s.g.env.refreshBefore(), life)
	var at time.Time
	switch {
	case e.expiry.IsZero():
		at = now // no access token: refresh it now
	default:
		// A random point of the window sources refresh in.
		at = e.expiry.Add(-w - w/10)
		if j := w / 10; j > 0 {
			at = at.Add(rand.N(j))
		}
		if span := (life - w) / 2; spread && span > 0 {
			at = at.Add(-rand.N(span))
		}
	}
	e.late = false
	if at.Before(now) {
		e.late = true
		// Overdue: the fleet was down or starting, the instance that
		// looked after it left, or the account is new here. It is
		// refreshed at a random point of the next half of the time
		// between two refreshes (at least a window), so that the
		// accounts that fell due meanwhile do not come in a herd, now or
		// at their next refreshes. An idle grant may be left with an
		// expired access token for that long; its refresh token is what
		// matters.
		span := max(w, (e.expiry.Sub(e.obtained)-w)/2)
		at = now
		if span > 0 {
			at = now.Add(rand.N(span))
		}
	}
	s.pushLocked(e, at)
}

func (s *grantSchedule) pushLocked(e *dueEntry, at time.Time) {
	e.at = at
	heap.Push(&s.due, e)
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// ---- the refreshes ----

// run starts the due refreshes, at most refreshWorkers at a time, until
// ctx ends (a refresh under way then finishes on its own).
func (s *grantSchedule) run(ctx context.Context) {
	for {
		s.mu.Lock()
		now := s.g.now()
		for s.running < refreshWorkers && len(s.due) > 0 && !s.due[0].at.After(now) {
			e := heap.Pop(&s.due).(*dueEntry)
			e.busy = true
			s.running++
			go s.refreshOne(ctx, e.account)
		}
		wait := time.Second // a fake clock in tests moves without telling
		if len(s.due) > 0 && s.running < refreshWorkers {
			wait = min(wait, max(s.due[0].at.Sub(now), 10*time.Millisecond))
		}
		s.mu.Unlock()
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			return
		case <-s.wake:
		case <-timer.C:
		}
		timer.Stop()
	}
}

// refreshOne refreshes one account if its stored token is due (another
// instance's request may have done it), and schedules the next time.
func (s *grantSchedule) refreshOne(ctx context.Context, account string) {
	g := s.g
	tok, err := g.refresher.refreshIfDue(ctx, account)
	if tok != nil {
		if src := g.accounts.loaded(account); src != nil {
			if cur := src.cur.Load(); cur == nil || cur.value != tok.value {
				src.store(tok)
			}
		}
	}
	s.finished(account, tok, err)
}

// finished records the outcome of a background refresh.
func (s *grantSchedule) finished(account string, tok *token, err error) {
	g := s.g
	log := g.env.logger()
	s.mu.Lock()
	defer func() {
		s.running--
		s.mu.Unlock()
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}()
	e := s.entries[account]
	if e == nil {
		return // disconnected meanwhile
	}
	e.busy = false
	if !s.ownsLocked(account) {
		s.removeLocked(e) // another instance looks after it now
		return
	}
	if err == nil {
		if e.failing != "" {
			log.Info("the idle grant refreshes again", zap.String("provider", g.cfg.Provider), zap.String("account", account),
				zap.Int("failures", e.failures))
		}
		spread := e.failures > 0 || e.late
		e.failures, e.failing = 0, ""
		if tok.expiry.After(e.expiry) || e.expiry.IsZero() {
			e.obtained, e.expiry = tok.obtained, tok.expiry
		}
		if tok.final {
			e.state = stateFinal
		}
		s.planAfterLocked(e, spread)
		return
	}
	var ce *ConsentError
	if errors.As(err, &ce) {
		e.state = stateNeedsConsent
		if e.failing != codeConsentRequired {
			log.Warn("refreshing an idle grant failed: it needs consent", zap.String("provider", g.cfg.Provider),
				zap.String("account", account), zap.String("reason", ce.Reason))
		}
		e.failing = codeConsentRequired
		return
	}
	if ctx := g.ctx; ctx.Err() != nil {
		return // unloaded
	}
	e.failures++
	code, _, _ := errorFacts(err)
	wait := backoff(e.failures)
	var te *TokenError
	if errors.As(err, &te) {
		if te.Permanent() {
			wait = maxBackoff
		}
		if te.RetryAfter > wait {
			wait = min(te.RetryAfter, maxRetryAfter)
		}
	}
	next := g.now().Add(wait)
	if code != e.failing {
		log.Warn("refreshing an idle grant failed; retrying with backoff (logged again when the error changes)",
			zap.String("provider", g.cfg.Provider), zap.String("account", account), zap.Error(err),
			zap.Time("next_attempt", next))
	} else {
		log.Debug("refreshing an idle grant failed again", zap.String("provider", g.cfg.Provider),
			zap.String("account", account), zap.String("error", code), zap.Int("failures", e.failures))
	}
	e.failing = code
	s.pushLocked(e, next)
}

// ---- membership and the list of stored grants ----

// tick is called by the grant's loop every watchInterval: every
// heartbeatInterval it writes this instance's heartbeat and reads the
// others'; when the membership changed, or every rescanInterval, it reads
// the list of stored grants again (in the background).
func (s *grantSchedule) tick(ctx context.Context) {
	s.mu.Lock()
	beat := s.beats == 0 || time.Since(s.lastBeatLocked()) >= heartbeatInterval
	s.mu.Unlock()
	if beat {
		s.heartbeat(ctx)
	}
	s.mu.Lock()
	scan := !s.scanning && s.beats >= 2 && (s.needScan || time.Since(s.scannedAt) > rescanInterval)
	if scan {
		s.scanning, s.needScan = true, false
	}
	s.mu.Unlock()
	if scan {
		go s.scan(ctx)
	}
}

// lastBeatLocked is when this instance last wrote its heartbeat.
func (s *grantSchedule) lastBeatLocked() time.Time {
	if p := s.peers[s.self]; p != nil {
		return p.changed
	}
	return time.Time{}
}

// heartbeat writes this instance's record and reads the others'.
func (s *grantSchedule) heartbeat(ctx context.Context) {
	g := s.g
	st, err := g.store.storage()
	if err != nil {
		return
	}
	s.mu.Lock()
	s.seq++
	own := memberRecord{Member: s.self, Seq: s.seq}
	own.Accounts, own.NeedsConsent = s.ownCountsLocked()
	s.mu.Unlock()
	dir := g.membersDir()
	if err := g.store.save(ctx, dir+"/"+s.self+".json", &own); err != nil {
		g.env.logger().Debug("writing the instance's heartbeat failed", zap.String("provider", g.cfg.Provider), zap.Error(err))
		return
	}
	keys, err := listKeys(ctx, st, dir)
	if err != nil {
		g.env.logger().Debug("listing the fleet's heartbeats failed", zap.String("provider", g.cfg.Provider), zap.Error(err))
		return
	}
	now := time.Now()
	seen := map[string]memberRecord{}
	for _, key := range keys {
		id, ok := strings.CutSuffix(path.Base(key), ".json")
		if !ok || id == s.self {
			continue
		}
		var rec memberRecord
		if found, err := g.store.load(ctx, dir+"/"+id+".json", &rec); err == nil && found && rec.Member == id {
			seen[id] = rec
		}
	}
	s.mu.Lock()
	s.beats++
	s.peers[s.self] = &peer{seq: s.seq, changed: now}
	var forgotten []string
	for id := range s.peers {
		if id == s.self {
			continue
		}
		if _, ok := seen[id]; !ok {
			delete(s.peers, id) // it left
		}
	}
	for id, rec := range seen {
		p := s.peers[id]
		switch {
		case p == nil:
			s.peers[id] = &peer{seq: rec.Seq, changed: now, accounts: rec.Accounts, needsConsent: rec.NeedsConsent}
		case p.seq != rec.Seq:
			p.seq, p.changed, p.accounts, p.needsConsent = rec.Seq, now, rec.Accounts, rec.NeedsConsent
		case now.Sub(p.changed) > memberForgotten:
			forgotten = append(forgotten, id)
			delete(s.peers, id)
		}
	}
	members := []string{s.self}
	for id, p := range s.peers {
		if id != s.self && now.Sub(p.changed) < memberTimeout {
			members = append(members, id)
		}
	}
	sort.Strings(members)
	changed := !slices.Equal(members, s.members)
	if changed {
		g.env.logger().Info("the instances sharing the grant's background refresh changed",
			zap.String("provider", g.cfg.Provider), zap.Int("instances", len(members)), zap.Int("before", len(s.members)))
		s.members = members
		s.needScan = true
		// Drop what another instance looks after now.
		for _, e := range s.entries {
			if !s.ownsLocked(e.account) && !e.busy {
				s.removeLocked(e)
			}
		}
	}
	s.mu.Unlock()
	for _, id := range forgotten {
		g.store.remove(ctx, dir+"/"+id+".json")
	}
}

// leave deletes this instance's heartbeat: the others share its accounts
// out at their next heartbeat.
func (s *grantSchedule) leave(ctx context.Context) {
	s.mu.Lock()
	beats := s.beats
	s.mu.Unlock()
	if beats > 0 {
		s.g.store.remove(ctx, s.g.membersDir()+"/"+s.self+".json")
	}
}

// scan reads the list of stored grants and the records of those this
// instance looks after and does not know yet.
func (s *grantSchedule) scan(ctx context.Context) {
	g := s.g
	defer func() {
		s.mu.Lock()
		s.scanning = false
		s.mu.Unlock()
	}()
	accounts, err := g.storedAccounts(ctx)
	if err != nil {
		s.mu.Lock()
		s.needScan = true
		s.mu.Unlock()
		g.env.logger().Debug("listing the stored grants failed", zap.String("provider", g.cfg.Provider), zap.Error(err))
		return
	}
	listed := make(map[string]bool, len(accounts))
	var unknown []string
	s.mu.Lock()
	s.scannedAt = time.Now()
	for _, a := range accounts {
		listed[a] = true
		if s.entries[a] == nil && s.ownsLocked(a) {
			unknown = append(unknown, a)
		}
	}
	for _, e := range s.entries {
		if !listed[e.account] && !e.busy {
			s.removeLocked(e) // deleted meanwhile
		}
	}
	s.mu.Unlock()
	for _, a := range unknown {
		if ctx.Err() != nil {
			return
		}
		rec, err := g.records.current(ctx, a)
		var ce *ConsentError
		switch {
		case errors.As(err, &ce):
			rec = &grantRecord{Account: a, NeedsConsent: true, Reason: ce.Reason}
		case err != nil:
			continue
		}
		s.learned(a, rec)
	}
}

// ownCountsLocked counts the accounts looked after here.
func (s *grantSchedule) ownCountsLocked() (accounts, needsConsent int) {
	for _, e := range s.entries {
		accounts++
		if e.state == stateNeedsConsent {
			needsConsent++
		}
	}
	return accounts, needsConsent
}

// counts returns how many accounts the fleet's instances look after, and
// how many of them need consent: this instance's now, the others' as of
// their last heartbeat. ok is false when this instance does not take part
// (its loop is not running) and knows of no other.
func (s *grantSchedule) counts() (accounts, needsConsent int, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	accounts, needsConsent = s.ownCountsLocked()
	ok = s.beats > 0 || len(s.entries) > 0
	now := time.Now()
	for id, p := range s.peers {
		if id != s.self && now.Sub(p.changed) < memberTimeout {
			accounts += p.accounts
			needsConsent += p.needsConsent
			ok = true
		}
	}
	return accounts, needsConsent, ok
}

// storedAccounts lists the accounts that have a grant in the storage,
// sorted.
func (g *grant) storedAccounts(ctx context.Context) ([]string, error) {
	storage, err := g.store.storage()
	if err != nil {
		return nil, err
	}
	keys, err := listKeys(ctx, storage, "oauth_bearer/grants/"+g.id)
	if err != nil {
		return nil, err
	}
	var accounts []string
	for _, key := range keys {
		if account, ok := strings.CutSuffix(path.Base(key), ".json"); ok && checkAccount(account) == nil {
			accounts = append(accounts, account)
		}
	}
	sort.Strings(accounts)
	return accounts, nil
}

// listKeys lists the keys under dir, each try bounded by storageTimeout. A
// listing is only used whole: file_system walks the directory and fails,
// with what it found so far, when a file vanishes under it (a record being
// replaced through a temporary file), which looks like a missing
// directory; such a listing is tried again, and after three failures is
// an error. A directory that does not exist has no keys.
func listKeys(ctx context.Context, st certmagic.Storage, dir string) ([]string, error) {
	var err error
	for range 3 {
		lctx, cancel := context.WithTimeout(ctx, storageTimeout)
		var keys []string
		keys, err = st.List(lctx, dir, false)
		cancel()
		switch {
		case err == nil:
			return keys, nil
		case errors.Is(err, fs.ErrNotExist) && len(keys) == 0 && !st.Exists(ctx, dir):
			return nil, nil
		case ctx.Err() != nil:
			return nil, ctx.Err()
		}
	}
	return nil, err
}
