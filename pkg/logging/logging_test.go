package logging

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

func TestJSONLogsPrintDurationsAsStrings(t *testing.T) {
	var buf bytes.Buffer
	log, err := New(&buf, "info", FormatJSON)
	if err != nil {
		t.Fatal(err)
	}
	log.Info("pair fetched", "took", 1500*time.Millisecond, "retry_in", 2*time.Minute)
	var line map[string]any
	if err := json.Unmarshal(buf.Bytes(), &line); err != nil {
		t.Fatalf("%v: %s", err, buf.String())
	}
	if line["took"] != "1.5s" || line["retry_in"] != "2m0s" {
		t.Errorf("durations = %v, %v; want \"1.5s\", \"2m0s\" in %s", line["took"], line["retry_in"], buf.String())
	}
}
