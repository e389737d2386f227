package slack_test

import (
	"context"
	"net/http"
	"testing"

	"github.com/candlekeep/candlekeep/services/monitor/notify"
)

// A report (the monthly SLA audit) is its headline, its lines and where it
// came from: no severity, value or firing facts.
func TestReportMessage(t *testing.T) {
	w := newWebhook(t, http.StatusOK, nil)
	n := notify.Notification{ID: "sla.report:1790812800", GroupKey: "sla.report", Kind: notify.Report,
		Alert: "SLA audit 2026-10-01 .. 2026-10-31", Severity: "info", Summary: "4 met, 3 missed, 0 not measured",
		Details: []string{"MISSED availability: 96.667 %", "met RTO: worst 45s"}, Source: "host-a"}
	if _, err := notifier(t, w.url(), since).Notify(context.Background(), n); err != nil {
		t.Fatal(err)
	}
	m := w.only(t)
	if m.Text != "SLA audit 2026-10-01 .. 2026-10-31: 4 met, 3 missed, 0 not measured" {
		t.Errorf("text = %q", m.Text)
	}
	want := []struct{ typ, text string }{
		{"header", "📋 SLA audit 2026-10-01 .. 2026-10-31"},
		{"section", "4 met, 3 missed, 0 not measured"},
		{"section", "MISSED availability: 96.667 %\nmet RTO: worst 45s"},
	}
	if len(m.Blocks) != 4 {
		t.Fatalf("blocks = %+v, want 4", m.Blocks)
	}
	for i, b := range want {
		got := m.Blocks[i]
		if got.Type != b.typ || got.Text == nil || got.Text.Text != b.text {
			t.Errorf("block %d = %s %v, want %s %q", i, got.Type, got.Text, b.typ, b.text)
		}
	}
	if c := m.Blocks[3]; c.Type != "context" || len(c.Elements) != 1 || c.Elements[0].Text != "Report `sla.report` · host-a" {
		t.Errorf("context block = %+v", c)
	}
}
