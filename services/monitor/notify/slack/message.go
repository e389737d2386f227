package slack

import (
	"fmt"
	"strings"
	"time"

	"github.com/slack-go/slack"

	"github.com/candlekeep/candlekeep/services/monitor/notify"
)

// Slack's limits on Block Kit text: a header holds 150 characters, a
// section field 2000.
const (
	maxHeader = 150
	maxField  = 2000
)

// Message builds the Block Kit message for n: a header that says what and
// how bad, the facts as fields, the runbook, and a context line that pairs
// a resolved message with the firing one it ends. Text is the fallback
// shown in notifications and by clients without blocks.
func Message(n notify.Notification, now time.Time) *slack.WebhookMessage {
	if n.Kind == notify.Report {
		return reportMessage(n)
	}
	header := fmt.Sprintf("%s %s %s", emoji(n), n.Alert, n.Kind.Title())

	since := "unknown"
	if !n.Since.IsZero() {
		since = n.Since.UTC().Format("2006-01-02 15:04") + " UTC"
		if n.Kind != notify.Firing {
			since += " (for " + notify.FormatDuration(notify.FiringFor(n, now)) + ")"
		}
	}
	value := "`" + orDash(n.Value) + "`"
	if n.Threshold != "" {
		value += " (threshold `" + n.Threshold + "`)"
	}
	fields := []*slack.TextBlockObject{
		mrkdwn("*Severity*\n" + orDash(n.Severity)),
		mrkdwn("*Since*\n" + since),
		mrkdwn("*Value*\n" + value),
	}
	if len(n.Members) > 0 {
		fields = append(fields, mrkdwn(fmt.Sprintf("*Members (%d)*\n", len(n.Members))+notify.FormatMembers(n.Members, notify.MaxMembers)))
	}
	if n.Kind == notify.Resolved && !n.ResolvedAt.IsZero() {
		fields = append(fields, mrkdwn("*Resolved*\n"+n.ResolvedAt.UTC().Format("2006-01-02 15:04")+" UTC"))
	}

	blocks := []slack.Block{
		slack.NewHeaderBlock(slack.NewTextBlockObject(slack.PlainTextType, clip(header, maxHeader), true, false)),
	}
	if n.Summary != "" {
		blocks = append(blocks, slack.NewSectionBlock(mrkdwn(clip(n.Summary, maxField)), nil, nil))
	}
	blocks = append(blocks, slack.NewSectionBlock(nil, fields, nil))
	if absoluteURL(n.Runbook) {
		// A button only takes an absolute URL: Slack rejects the whole
		// message otherwise.
		blocks = append(blocks, slack.NewActionBlock("runbook",
			slack.NewButtonBlockElement("runbook", "runbook",
				slack.NewTextBlockObject(slack.PlainTextType, "Runbook", false, false)).WithURL(n.Runbook)))
	} else if n.Runbook != "" {
		blocks = append(blocks, slack.NewContextBlock("runbook", mrkdwn("Runbook: "+n.Runbook)))
	}
	blocks = append(blocks, slack.NewContextBlock("group", mrkdwn(pairing(n, now))))

	return &slack.WebhookMessage{
		Text:   fallback(n),
		Blocks: &slack.Blocks{BlockSet: blocks},
	}
}

// reportMessage builds a Report's message: its headline, its lines and
// where it came from; no alert facts, no pairing.
func reportMessage(n notify.Notification) *slack.WebhookMessage {
	blocks := []slack.Block{
		slack.NewHeaderBlock(slack.NewTextBlockObject(slack.PlainTextType, clip("📋 "+n.Alert, maxHeader), true, false)),
	}
	if n.Summary != "" {
		blocks = append(blocks, slack.NewSectionBlock(mrkdwn(n.Summary), nil, nil))
	}
	if len(n.Details) > 0 {
		blocks = append(blocks, slack.NewSectionBlock(mrkdwn(strings.Join(n.Details, "\n")), nil, nil))
	}
	line := "Report `" + n.GroupKey + "`"
	if n.Source != "" {
		line += " · " + n.Source
	}
	blocks = append(blocks, slack.NewContextBlock("report", mrkdwn(line)))
	return &slack.WebhookMessage{Text: n.Alert + ": " + n.Summary, Blocks: &slack.Blocks{BlockSet: blocks}}
}

// pairing is the context line that ties a group's messages together.
func pairing(n notify.Notification, now time.Time) string {
	at := "an unknown time"
	if !n.Since.IsZero() {
		at = notify.ClockUTC(n.Since, now)
	}
	var s string
	switch n.Kind {
	case notify.Resolved:
		s = fmt.Sprintf("Resolves the alert fired at %s, group `%s`", at, n.GroupKey)
	case notify.Repeat:
		s = fmt.Sprintf("Still firing since %s, group `%s`", at, n.GroupKey)
	default:
		s = fmt.Sprintf("Fired at %s, group `%s`", at, n.GroupKey)
	}
	if n.Source != "" {
		s += " · " + n.Source
	}
	return s
}

// fallback is the plain text of the message.
func fallback(n notify.Notification) string {
	s := "[" + n.Kind.Title() + "] " + n.Severity + " " + n.Alert
	if n.Summary != "" {
		s += ": " + n.Summary
	}
	return s
}

func emoji(n notify.Notification) string {
	if n.Kind == notify.Resolved {
		return "✅"
	}
	switch n.Severity {
	case "critical":
		return "🔴"
	case "warning":
		return "🟠"
	}
	return "🔵"
}

func mrkdwn(s string) *slack.TextBlockObject {
	return slack.NewTextBlockObject(slack.MarkdownType, clip(s, maxField), false, false)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// clip shortens s to at most n runes.
func clip(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

func absoluteURL(s string) bool {
	return strings.HasPrefix(s, "https://") || strings.HasPrefix(s, "http://")
}
