package monitor

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/cluster"
)

// Polling bounds: every request of an evaluation has at most maxPollTimeout
// (less with a short evaluation interval), and PING and STATS collect
// answers from every instance for at most collectWindow.
const (
	maxPollTimeout = 5 * time.Second
	collectWindow  = 500 * time.Millisecond
)

// watchedConsumers are the durable consumers whose lag the monitor reports.
var watchedConsumers = []struct{ Stream, Consumer string }{
	{candles.StreamSync, "fetcher-requests"},
	{candles.StreamJobs, "fetcher-jobs"},
	{candles.StreamCandles, "writer"},
	{candles.StreamEvents, "writer-runs"},
}

// poll is what one round of requests learned.
type poll struct {
	settings    cluster.Settings
	settingsErr error
	coverage    *candles.CoverageResponse
	coverageErr error
	alive       map[string]int
	fetchers    []candles.FetcherStats
	consumers   []consumerState
}

// pollTimeout is the bound of one request.
func (m *Monitor) pollTimeout() time.Duration {
	return min(maxPollTimeout, max(m.o.EvalInterval, 200*time.Millisecond))
}

// pollAll asks everything concurrently, each request bounded.
func (m *Monitor) pollAll(ctx context.Context) poll {
	var p poll
	// The configuration first (the coverage request names its pairs),
	// with its own bound so a slow read leaves the others their time.
	sctx, scancel := context.WithTimeout(ctx, m.pollTimeout())
	p.settings, p.settingsErr = m.loadSettings(sctx)
	scancel()
	ctx, cancel := context.WithTimeout(ctx, m.pollTimeout())
	defer cancel()
	var wg sync.WaitGroup
	wg.Go(func() {
		req, _ := json.Marshal(candles.CoverageRequest{Pairs: p.settings.Pairs()})
		p.coverage, p.coverageErr = request[candles.CoverageResponse](ctx, m.o.Conn, candles.SubjectAPICoverage, req)
	})
	window := min(collectWindow, m.pollTimeout())
	wg.Go(func() { p.alive = m.ping(ctx, window) })
	wg.Go(func() { p.fetchers = m.fetcherStats(ctx, window) })
	wg.Go(func() { p.consumers = m.consumerInfos(ctx) })
	wg.Wait()
	return p
}

// loadSettings reads the cluster configuration (never writes it): the
// stored keys over the defaults.
func (m *Monitor) loadSettings(ctx context.Context) (cluster.Settings, error) {
	s := cluster.Defaults()
	values, _, err := cluster.Load(ctx, m.js)
	if err != nil {
		return s, err
	}
	for _, k := range cluster.Keys() {
		if v, ok := values[k.Name]; ok {
			_ = k.Set(&s, v) // an invalid stored value: the cluster keeps the last good one, we the default
		}
	}
	return s, nil
}

// schedulePeriod is the time between the schedule's next two ticks (0 when off).
func schedulePeriod(schedule string, now time.Time) time.Duration {
	pattern, next, err := cluster.ParseSchedule(schedule, now)
	if err != nil || pattern == cluster.ScheduleOff {
		return 0
	}
	_, after, err := cluster.ParseSchedule(schedule, next)
	if err != nil {
		return 0
	}
	return after.Sub(next)
}

// request sends a request and decodes the JSON reply; a micro error reply
// is an error.
func request[T any](ctx context.Context, nc *nats.Conn, subject string, data []byte) (*T, error) {
	msg, err := nc.RequestWithContext(ctx, subject, data)
	if err != nil {
		return nil, fmt.Errorf("request %s: %w", subject, err)
	}
	if e := msg.Header.Get(micro.ErrorHeader); e != "" {
		return nil, &serviceError{Subject: subject, Code: msg.Header.Get(micro.ErrorCodeHeader), Description: e}
	}
	var v T
	if err := json.Unmarshal(msg.Data, &v); err != nil {
		return nil, fmt.Errorf("reply of %s: %w", subject, err)
	}
	return &v, nil
}

// serviceError is a micro error reply: the service answered, and could
// not do what was asked.
type serviceError struct {
	Subject, Code, Description string
}

func (e *serviceError) Error() string {
	return fmt.Sprintf("%s answered %s: %s", e.Subject, e.Code, e.Description)
}

// collect publishes a request on subject and gathers every reply arriving
// within window.
func collect(ctx context.Context, nc *nats.Conn, subject string, window time.Duration) ([][]byte, error) {
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("subscribe for %s replies: %w", subject, err)
	}
	defer sub.Unsubscribe()
	if err := nc.PublishRequest(subject, inbox, nil); err != nil {
		return nil, fmt.Errorf("request %s: %w", subject, err)
	}
	ctx, cancel := context.WithTimeout(ctx, window)
	defer cancel()
	var out [][]byte
	for {
		msg, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return out, nil // the window ended
		}
		out = append(out, msg.Data)
	}
}

// ping counts the instances of each service answering $SRV.PING.
func (m *Monitor) ping(ctx context.Context, window time.Duration) map[string]int {
	alive := map[string]int{}
	subject, _ := micro.ControlSubject(micro.PingVerb, "", "")
	replies, err := collect(ctx, m.o.Conn, subject, window)
	if err != nil {
		m.log.Debug("ping services", "err", err)
	}
	for _, data := range replies {
		var p micro.Ping
		if json.Unmarshal(data, &p) == nil && p.Name != "" {
			alive[p.Name]++
		}
	}
	return alive
}

// fetcherStats collects the FetcherStats of every fetcher from their
// micro STATS (the endpoints' custom data).
func (m *Monitor) fetcherStats(ctx context.Context, window time.Duration) []candles.FetcherStats {
	subject, _ := micro.ControlSubject(micro.StatsVerb, serviceFetcher, "")
	replies, err := collect(ctx, m.o.Conn, subject, window)
	if err != nil {
		m.log.Debug("fetcher stats", "err", err)
	}
	seen := map[string]bool{}
	var out []candles.FetcherStats
	for _, data := range replies {
		var st micro.Stats
		if json.Unmarshal(data, &st) != nil {
			continue
		}
		for _, ep := range st.Endpoints {
			var fs candles.FetcherStats
			if len(ep.Data) == 0 || json.Unmarshal(ep.Data, &fs) != nil || fs.ID == "" {
				continue
			}
			if !seen[fs.ID] {
				seen[fs.ID] = true
				out = append(out, fs)
			}
			break
		}
	}
	return out
}

// consumerInfos reads the watched consumers' state.
func (m *Monitor) consumerInfos(ctx context.Context) []consumerState {
	out := make([]consumerState, len(watchedConsumers))
	var wg sync.WaitGroup
	for i, w := range watchedConsumers {
		out[i] = consumerState{Stream: w.Stream, Consumer: w.Consumer}
		wg.Go(func() {
			c, err := m.js.Consumer(ctx, w.Stream, w.Consumer)
			if err != nil {
				return
			}
			info := c.CachedInfo()
			out[i].Found = true
			out[i].Pending = info.NumPending
			out[i].AckPending = uint64(max(info.NumAckPending, 0))
			out[i].Redelivered = uint64(max(info.NumRedelivered, 0))
			out[i].AckFloorConsumerSeq = info.AckFloor.Consumer
		})
	}
	wg.Wait()
	return out
}

// maxDeliveriesPrefix is the advisory a consumer sends when a message
// reached its MaxDeliver: $JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>.
const maxDeliveriesPrefix = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES."

// watchAdvisories counts MAX_DELIVERIES advisories until the returned
// subscription is ended.
func (m *Monitor) watchAdvisories() (*nats.Subscription, error) {
	sub, err := m.o.Conn.Subscribe(maxDeliveriesPrefix+">", func(msg *nats.Msg) {
		rest := strings.TrimPrefix(msg.Subject, maxDeliveriesPrefix)
		stream, consumer, ok := strings.Cut(rest, ".")
		if !ok {
			return
		}
		m.mu.Lock()
		m.ev.c.MaxDeliveries[stream+"/"+consumer]++
		m.mu.Unlock()
		m.log.Warn("a message reached its max deliveries", "stream", stream, "consumer", consumer)
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe to max-deliveries advisories: %w", err)
	}
	// The server has the subscription before the monitor says it is
	// listening (an advisory sent just after is not missed).
	if err := m.o.Conn.FlushTimeout(maxPollTimeout); err != nil {
		m.log.Debug("flush the advisories subscription", "err", err)
	}
	return sub, nil
}
