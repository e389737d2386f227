package sla

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/cluster"
	"github.com/candlekeep/candlekeep/services/monitor/notify"
)

// Names of the monthly audit's schedule.
const (
	DefaultSchedule = candles.DefaultSLASchedule
	ScheduleOff     = cluster.ScheduleOff
	// ConsumerName is the monitor's durable consumer of the ticks (SYNC).
	ConsumerName = "monitor-sla"

	headerSchedule       = "Nats-Schedule"
	headerScheduleTarget = "Nats-Schedule-Target"
	scheduleBody         = `{"reason":"schedule"}`
	// auditWait bounds one audit: reading a month of EVENTS and sending.
	auditWait = 5 * time.Minute
)

// ReportEvent is sla.report: the scheduled audit's report and the summary
// sent to the receivers.
type ReportEvent struct {
	candles.EventHeader
	Report  Report `json:"report"`
	Summary string `json:"summary"`
}

// ParseSchedule reads an --sla-schedule: the syntax of --sync-schedule
// (cluster.ParseSchedule), errors naming --sla-schedule.
func ParseSchedule(s string, now time.Time) (pattern string, next time.Time, err error) {
	pattern, next, err = cluster.ParseSchedule(s, now)
	if err != nil {
		return "", time.Time{}, errors.New(strings.Replace(err.Error(), "--sync-schedule", "--sla-schedule", 1))
	}
	return pattern, next, nil
}

// Sender queues a notification for the receivers (notify.Dispatcher).
type Sender interface {
	Send(ctx context.Context, n notify.Notification) error
}

var _ Sender = (*notify.Dispatcher)(nil)

// AuditorOptions configure an Auditor.
type AuditorOptions struct {
	JS jetstream.JetStream
	// Schedule is the --sla-schedule cron; "off" removes the schedule.
	Schedule string
	// Sender gets the summary of each audit; nil sends none.
	Sender  Sender
	Targets Targets
	// Source names the system in the summary (a host or cluster name).
	Source string
	Logger *slog.Logger
	Now    func() time.Time
}

// Validate names what cannot work.
func (o AuditorOptions) Validate() error {
	var errs []error
	if o.JS == nil {
		errs = append(errs, errors.New("sla: no JetStream context"))
	}
	if o.Logger == nil || o.Now == nil {
		errs = append(errs, errors.New("sla: a logger and a clock are needed"))
	}
	if _, _, err := ParseSchedule(o.Schedule, time.Time{}); err != nil {
		errs = append(errs, err)
	}
	if err := o.Targets.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Auditor runs the monthly audit on the ticks of its JetStream message
// schedule: it audits the calendar month before the tick, publishes
// sla.report and sends the summary. However many monitors run, the server
// publishes one tick and the durable consumer hands it to one of them; a
// tick delivered twice publishes and sends once (message and notification
// ids derive from the month).
type Auditor struct {
	o AuditorOptions
}

// NewAuditor checks o.
func NewAuditor(o AuditorOptions) (*Auditor, error) {
	if err := o.Validate(); err != nil {
		return nil, err
	}
	return &Auditor{o: o}, nil
}

// Run puts the schedule in place and audits on each tick until ctx ends.
func (a *Auditor) Run(ctx context.Context) error {
	pattern, next, _ := ParseSchedule(a.o.Schedule, a.o.Now())
	cons, err := a.o.JS.CreateOrUpdateConsumer(ctx, candles.StreamSync, jetstream.ConsumerConfig{
		Durable:       ConsumerName,
		Description:   "the monitor's monthly SLA audit ticks",
		FilterSubject: candles.SubjectSLATick,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       auditWait + time.Minute,
		// Ticks from before the first monitor ran are not audited; later
		// ones wait in the stream for a monitor to come back.
		DeliverPolicy: jetstream.DeliverNewPolicy,
		MaxDeliver:    10,
	})
	if err != nil {
		return fmt.Errorf("consumer %s > %s: %w", candles.StreamSync, ConsumerName, err)
	}
	if err := installSchedule(ctx, a.o.JS, pattern, a.o.Logger); err != nil {
		return err
	}
	if !next.IsZero() {
		a.o.Logger.Info("next SLA audit", "at", next.Format(time.RFC3339))
	}
	// A missed heartbeat (a slow server) is no reason to stop; a deleted
	// consumer or stream is (the monitor starts the audit again).
	it, err := cons.Messages(jetstream.WithMessagesErrOnMissingHeartbeat(false))
	if err != nil {
		return fmt.Errorf("consume %s > %s: %w", candles.StreamSync, ConsumerName, err)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		msg, err := it.Next()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				return nil
			}
			return fmt.Errorf("consume %s > %s: %w", candles.StreamSync, ConsumerName, err)
		}
		a.handle(ctx, msg)
	}
}

// handle audits for one tick: acked once the report is published and the
// summary queued, NAKed with a growing delay for trouble that may pass.
func (a *Auditor) handle(ctx context.Context, msg jetstream.Msg) {
	_ = msg.InProgress()
	actx, cancel := context.WithTimeout(ctx, auditWait)
	defer cancel()
	r, err := a.Audit(actx, a.o.Now())
	if err != nil {
		delivered := uint64(1)
		if md, mdErr := msg.Metadata(); mdErr == nil {
			delivered = md.NumDelivered
		}
		a.o.Logger.Error("SLA audit", "err", err, "attempt", delivered)
		_ = msg.NakWithDelay(time.Duration(delivered) * time.Minute)
		return
	}
	a.o.Logger.Info("SLA audit published", "from", r.From.Format(time.RFC3339), "to", r.To.Format(time.RFC3339), "missed", r.Missed())
	_ = msg.Ack()
}

// Audit audits the calendar month before at, publishes sla.report and
// sends the summary.
func (a *Auditor) Audit(ctx context.Context, at time.Time) (Report, error) {
	to := time.Date(at.UTC().Year(), at.UTC().Month(), 1, 0, 0, 0, 0, time.UTC)
	from := to.AddDate(0, -1, 0)
	loaded, err := Read(ctx, a.o.JS, from, to)
	if err != nil {
		return Report{}, err
	}
	r := Compute(loaded.Events, from, to, a.o.Targets)
	r.Notes = append(r.Notes, loaded.Notes(from)...)
	headline, lines := Summary(r)
	title := "SLA audit " + from.Format("January 2006")
	ev := &ReportEvent{EventHeader: candles.NewHeader(candles.KindSLAReport, ""), Report: r,
		Summary: title + ": " + headline + "\n" + strings.Join(lines, "\n")}
	if err := candles.PublishEvent(ctx, a.o.JS, ev, candles.SLAReportID(from), a.o.Now()); err != nil {
		return Report{}, err
	}
	if a.o.Sender == nil {
		return r, nil
	}
	severity := "info"
	if r.Missed() {
		severity = "warning"
	}
	n := notify.Notification{
		ID: candles.SLAReportID(from), GroupKey: candles.KindSLAReport, Kind: notify.Report,
		Alert: title, Severity: severity, Summary: headline, Details: lines, Source: a.o.Source,
	}
	if err := a.o.Sender.Send(ctx, n); err != nil {
		return Report{}, fmt.Errorf("send the SLA summary: %w", err)
	}
	return r, nil
}

// installSchedule makes the SYNC stream's SLA schedule message match
// pattern: an identical one is left alone (its timer keeps running), a
// different one replaces it, "off" removes it.
func installSchedule(ctx context.Context, js jetstream.JetStream, pattern string, log *slog.Logger) error {
	stream, err := js.Stream(ctx, candles.StreamSync)
	if err != nil {
		return fmt.Errorf("stream %s: %w", candles.StreamSync, err)
	}
	current, err := stream.GetLastMsgForSubject(ctx, candles.SubjectSLASchedule)
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
		current = nil
	case err != nil:
		return fmt.Errorf("read the SLA schedule: %w", err)
	}
	if pattern == ScheduleOff {
		if current != nil {
			if err := stream.Purge(ctx, jetstream.WithPurgeSubject(candles.SubjectSLASchedule)); err != nil {
				return fmt.Errorf("remove the SLA schedule: %w", err)
			}
			log.Info("SLA schedule removed (--sla-schedule off)")
		}
		return nil
	}
	if current != nil && current.Header.Get(headerSchedule) == pattern && current.Header.Get(headerScheduleTarget) == candles.SubjectSLATick {
		log.Info("SLA schedule in place", "schedule", pattern, "subject", candles.SubjectSLASchedule)
		return nil
	}
	msg := nats.NewMsg(candles.SubjectSLASchedule)
	msg.Header.Set(headerSchedule, pattern)
	msg.Header.Set(headerScheduleTarget, candles.SubjectSLATick)
	msg.Data = []byte(scheduleBody)
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("install the SLA schedule %q: %w", pattern, err)
	}
	log.Info("SLA schedule installed", "schedule", pattern, "subject", candles.SubjectSLASchedule, "target", candles.SubjectSLATick)
	return nil
}
