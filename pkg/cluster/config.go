package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// ConfigBucket is the JetStream KV bucket of the cluster-wide settings: one
// key per setting, named like its flag, the value as the flag takes it.
// Every write is a new revision (History keeps the last ones), so `nats kv
// history candlekeep_config sync-schedule` shows who changed what when.
const ConfigBucket = "candlekeep_config"

// configHistory is how many revisions of each key the bucket keeps.
const configHistory = 16

// Event kinds of the configuration.
const (
	// KindConfigChanged: a setting took a new value.
	KindConfigChanged = "config.changed"
	// KindConfigInvalid: a value written to ConfigBucket (for example with
	// `nats kv put`) does not parse; processes keep the last good value.
	KindConfigInvalid = "config.invalid"
)

// ConfigChanged is the config.changed event.
type ConfigChanged struct {
	candles.EventHeader
	Key      string `json:"key"`
	Value    string `json:"value"`
	Previous string `json:"previous,omitempty"`
	Revision uint64 `json:"revision"`
	// By names who wrote it when a candlekeep command did ("up", "config set").
	By string `json:"by,omitempty"`
}

// ConfigInvalid is the config.invalid event.
type ConfigInvalid struct {
	candles.EventHeader
	Key      string `json:"key"`
	Value    string `json:"value"`
	Revision uint64 `json:"revision"`
	Reason   string `json:"reason"`
	// Using is the value processes keep using.
	Using string `json:"using"`
}

// JoinOptions says how a process joins the cluster's configuration.
type JoinOptions struct {
	// Seed is the process's settings (its flags and their defaults): used
	// for keys the bucket does not have, and written there when explicit
	// (or when the process is authoritative).
	Seed Settings
	// Explicit names the keys the operator set on this process's command
	// line or environment.
	Explicit map[string]bool
	// Authoritative processes (`candlekeep up`) write their explicit keys
	// over the stored ones; the others warn and follow the store.
	Authoritative bool
	// By names the writer in config.changed events ("up").
	By     string
	Logger *slog.Logger
	Now    func() time.Time
}

// Config is a process's live view of the cluster settings.
type Config struct {
	kv  jetstream.KeyValue
	js  jetstream.JetStream
	log *slog.Logger
	now func() time.Time

	mu      sync.Mutex
	cur     Settings
	revs    map[string]uint64
	subs    []func(key string, s Settings)
	changed chan struct{}
}

// OpenBucket creates the configuration bucket if it is missing (replicas
// from the seed) and returns it; an existing bucket is left as it is.
func OpenBucket(ctx context.Context, js jetstream.JetStream, replicas int) (jetstream.KeyValue, error) {
	kv, err := js.KeyValue(ctx, ConfigBucket)
	if err == nil {
		return kv, nil
	}
	if !errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, fmt.Errorf("kv bucket %s: %w", ConfigBucket, err)
	}
	kv, err = js.CreateKeyValue(ctx, bucketConfig(replicas))
	if errors.Is(err, jetstream.ErrBucketExists) {
		return js.KeyValue(ctx, ConfigBucket)
	}
	if err != nil {
		return nil, fmt.Errorf("create kv bucket %s: %w", ConfigBucket, err)
	}
	return kv, nil
}

// bucketConfig is the configuration of ConfigBucket.
func bucketConfig(replicas int) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      ConfigBucket,
		Description: "candlekeep: cluster-wide settings, one key per flag (candlekeep config get|set)",
		History:     configHistory,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	}
}

// Join opens the configuration, seeds missing keys, applies or reports the
// explicit flags and loads the current settings. Run keeps them current.
func Join(ctx context.Context, js jetstream.JetStream, o JoinOptions) (*Config, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if err := o.Seed.Validate(); err != nil {
		return nil, err
	}
	kv, err := OpenBucket(ctx, js, o.Seed.StreamReplicas)
	if err != nil {
		return nil, err
	}
	c := &Config{kv: kv, js: js, log: o.Logger, now: o.Now, cur: o.Seed, revs: map[string]uint64{}, changed: make(chan struct{}, 1)}
	for _, k := range Keys() {
		want := k.Get(&o.Seed)
		e, err := kv.Get(ctx, k.Name)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
			if !o.Explicit[k.Name] && !o.Authoritative {
				// A default is this process's guess, not the operator's
				// word: use it, but leave the key for whoever knows.
				continue
			}
			rev, err := kv.Create(ctx, k.Name, []byte(want))
			if errors.Is(err, jetstream.ErrKeyExists) {
				if e, err = kv.Get(ctx, k.Name); err != nil {
					return nil, fmt.Errorf("read setting %s: %w", k.Name, err)
				}
				break // another process seeded it first; take theirs
			}
			if err != nil {
				return nil, fmt.Errorf("seed setting %s: %w", k.Name, err)
			}
			c.revs[k.Name] = rev
			c.log.Info("cluster setting seeded", "key", k.Name, "value", k.Show(want), "revision", rev)
			continue
		case err != nil:
			return nil, fmt.Errorf("read setting %s: %w", k.Name, err)
		}
		stored := string(e.Value())
		if err := k.Set(&c.cur, stored); err != nil {
			c.invalid(ctx, k, stored, e.Revision(), err)
			c.revs[k.Name] = e.Revision()
			continue
		}
		c.revs[k.Name] = e.Revision()
		if !o.Explicit[k.Name] || normal(k, stored) == normal(k, want) {
			continue
		}
		if !o.Authoritative {
			c.log.Warn("flag disagrees with the cluster configuration; following the cluster",
				"flag", "--"+k.Name, "given", k.Show(want), "cluster", k.Show(stored), "revision", e.Revision(),
				"to_change", fmt.Sprintf("candlekeep config set %s=%q", k.Name, k.Show(want)))
			continue
		}
		rev, err := kv.Update(ctx, k.Name, []byte(want), e.Revision())
		if err != nil {
			return nil, fmt.Errorf("write setting %s: %w", k.Name, err)
		}
		_ = k.Set(&c.cur, want)
		c.revs[k.Name] = rev
		c.log.Info("cluster setting changed by flag", "key", k.Name, "value", k.Show(want), "previous", k.Show(stored), "revision", rev)
		c.announce(ctx, k, want, stored, rev, o.By)
	}
	return c, nil
}

// normal is a value as the key formats it, so "@every 15s" and
// "@every 15s " or "30m0s" and "30m" compare equal.
func normal(k Key, v string) string {
	var s Settings
	if k.Set(&s, v) != nil {
		return v
	}
	return k.Get(&s)
}

// Current returns the settings now in force.
func (c *Config) Current() Settings {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.cur
	s.Symbols = append([]string(nil), s.Symbols...)
	s.Intervals = append([]string(nil), s.Intervals...)
	return s
}

// OnChange registers fn, called (from Run's goroutine) with the key and the
// new settings after every change. Register before Run.
func (c *Config) OnChange(fn func(key string, s Settings)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.subs = append(c.subs, fn)
}

// Run watches the bucket and applies every change until ctx ends. An
// invalid value is refused (config.invalid), the last good one stays. A
// bucket that disappears (deleted, or the NATS store lost) is created again
// and seeded with the settings in force here (resource.recreated).
func (c *Config) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		// Not UpdatesOnly: the current values come first, so a change made
		// between Join and this watch (or while the watch was down) is not
		// missed; apply skips revisions it has already seen.
		w, err := c.kv.WatchAll(ctx)
		if err != nil {
			c.log.Warn("cannot watch the cluster configuration; retrying", "bucket", ConfigBucket, "err", err)
			c.restore(ctx, err)
			if !sleep(ctx, time.Second) {
				return nil
			}
			continue
		}
		c.follow(ctx, w)
		_ = w.Stop()
		c.restore(ctx, nil)
		if !sleep(ctx, time.Second) {
			return nil
		}
	}
	return nil
}

// bucketCheckEvery is how often a running watch checks that the bucket is
// still there: a watch on a deleted bucket neither ends nor errs.
const bucketCheckEvery = 2 * time.Second

// follow applies the watch's entries until it ends, ctx ends or the bucket
// is gone.
func (c *Config) follow(ctx context.Context, w jetstream.KeyWatcher) {
	t := time.NewTicker(bucketCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e != nil {
				c.apply(ctx, e)
			}
		case <-t.C:
			if _, err := c.js.KeyValue(ctx, ConfigBucket); errors.Is(err, jetstream.ErrBucketNotFound) {
				return
			}
		}
	}
}

// restore creates the bucket again if it is gone, seeded with every setting
// in force in this process; keys another process wrote first are kept.
func (c *Config) restore(ctx context.Context, cause error) {
	if _, err := c.js.KeyValue(ctx, ConfigBucket); !errors.Is(err, jetstream.ErrBucketNotFound) {
		return
	}
	kv, err := c.js.CreateKeyValue(ctx, bucketConfig(c.Current().StreamReplicas))
	created := err == nil
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = c.js.KeyValue(ctx, ConfigBucket)
	}
	if err != nil {
		c.log.Error("the cluster configuration bucket is missing and cannot be recreated; retrying", "bucket", ConfigBucket, "err", err)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.kv = kv
	for _, k := range Keys() {
		if rev, err := kv.Create(ctx, k.Name, []byte(k.Get(&c.cur))); err == nil {
			c.revs[k.Name] = rev
		} else if e, gerr := kv.Get(ctx, k.Name); gerr == nil {
			c.revs[k.Name] = e.Revision() - 1 // the watch applies the other process's value
		}
	}
	if !created {
		return
	}
	reason := "bucket not found"
	if cause != nil {
		reason = cause.Error()
	}
	c.log.Warn("cluster configuration bucket was missing; recreated with the settings in force", "bucket", ConfigBucket)
	ev := &candles.ResourceRecreated{EventHeader: candles.NewHeader(candles.KindResourceRecreated, ""),
		Resource: "kv " + ConfigBucket, Service: "config", Reason: reason}
	if err := candles.PublishEvent(ctx, c.js, ev, "", c.now()); err != nil {
		c.log.Debug("resource.recreated not published", "err", err)
	}
}

// apply takes one watched entry.
func (c *Config) apply(ctx context.Context, e jetstream.KeyValueEntry) {
	k, ok := KeyByName(e.Key())
	if !ok {
		c.log.Warn("unknown key in the cluster configuration; ignored", "key", e.Key(), "known", KeyNames())
		return
	}
	c.mu.Lock()
	if e.Revision() <= c.revs[k.Name] {
		c.mu.Unlock()
		return // already applied (our own write, or seen at Join)
	}
	c.revs[k.Name] = e.Revision()
	if e.Operation() != jetstream.KeyValuePut {
		c.mu.Unlock()
		c.log.Warn("cluster setting deleted; keeping the value in force (set it again with candlekeep config set)", "key", k.Name, "value", k.Show(k.Get(&c.cur)))
		return
	}
	prev := k.Get(&c.cur)
	next := c.cur
	err := k.Set(&next, string(e.Value()))
	if err == nil {
		c.cur = next
	}
	subs := append([]func(string, Settings){}, c.subs...)
	cur := c.cur
	c.mu.Unlock()
	if err != nil {
		c.invalid(ctx, k, string(e.Value()), e.Revision(), err)
		return
	}
	now := k.Get(&cur)
	if now == prev {
		return
	}
	c.log.Info("cluster setting changed", "key", k.Name, "value", k.Show(now), "previous", k.Show(prev), "revision", e.Revision())
	c.announce(ctx, k, now, prev, e.Revision(), "")
	for _, fn := range subs {
		fn(k.Name, cur)
	}
}

// invalid reports a stored value that does not parse.
func (c *Config) invalid(ctx context.Context, k Key, value string, rev uint64, err error) {
	using := k.Show(k.Get(&c.cur))
	value = k.Show(value)
	c.log.Error("invalid value in the cluster configuration; keeping the last good one",
		"key", k.Name, "value", value, "revision", rev, "err", err, "using", using,
		"to_fix", fmt.Sprintf("candlekeep config set %s=...", k.Name))
	ev := &ConfigInvalid{EventHeader: candles.NewHeader(KindConfigInvalid, ""), Key: k.Name, Value: value,
		Revision: rev, Reason: err.Error(), Using: using}
	if err := candles.PublishEvent(ctx, c.js, ev, "config.invalid:"+k.Name+":"+strconv.FormatUint(rev, 10), c.now()); err != nil {
		c.log.Debug("config.invalid not published", "err", err)
	}
}

// announce publishes config.changed once per revision, however many
// processes see it.
func (c *Config) announce(ctx context.Context, k Key, value, prev string, rev uint64, by string) {
	if err := publishChanged(ctx, c.js, k, value, prev, rev, by, c.now()); err != nil {
		c.log.Debug("config.changed not published", "err", err)
	}
}

// Set validates value for key and writes it (the `candlekeep config set`
// path), announcing the change. It returns the new revision.
func Set(ctx context.Context, js jetstream.JetStream, key, value, by string, now time.Time) (uint64, error) {
	k, ok := KeyByName(key)
	if !ok {
		return 0, fmt.Errorf("unknown setting %q; the settings are %v", key, KeyNames())
	}
	var s Settings
	if err := k.Set(&s, value); err != nil {
		return 0, err
	}
	value = k.Get(&s)
	kv, err := OpenBucket(ctx, js, DefaultStreamReplicas)
	if err != nil {
		return 0, err
	}
	prev := ""
	if e, err := kv.Get(ctx, key); err == nil {
		prev = string(e.Value())
	}
	rev, err := kv.Put(ctx, key, []byte(value))
	if err != nil {
		return 0, fmt.Errorf("write setting %s: %w", key, err)
	}
	_ = publishChanged(ctx, js, k, value, prev, rev, by, now)
	return rev, nil
}

// publishChanged announces one change, once per key and revision however
// many processes see it, with secret values redacted.
func publishChanged(ctx context.Context, js jetstream.JetStream, k Key, value, prev string, rev uint64, by string, now time.Time) error {
	ev := &ConfigChanged{EventHeader: candles.NewHeader(KindConfigChanged, ""), Key: k.Name, Value: k.Show(value),
		Previous: k.Show(prev), Revision: rev, By: by}
	return candles.PublishEvent(ctx, js, ev, "config.changed:"+k.Name+":"+strconv.FormatUint(rev, 10), now)
}

// Load reads the stored settings without joining (`candlekeep config get`):
// keys not stored yet read as missing.
func Load(ctx context.Context, js jetstream.JetStream) (values map[string]string, revs map[string]uint64, err error) {
	kv, err := js.KeyValue(ctx, ConfigBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return map[string]string{}, map[string]uint64{}, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("kv bucket %s: %w", ConfigBucket, err)
	}
	values, revs = map[string]string{}, map[string]uint64{}
	for _, k := range Keys() {
		e, err := kv.Get(ctx, k.Name)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, nil, fmt.Errorf("read setting %s: %w", k.Name, err)
		}
		values[k.Name], revs[k.Name] = string(e.Value()), e.Revision()
	}
	return values, revs, nil
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Revision is the KV revision of key's value in force (0 if unknown).
func (c *Config) Revision(key string) uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.revs[key]
}
