package monitor

import (
	"encoding/json"
	"fmt"

	"github.com/nats-io/nats.go/micro"

	"github.com/candlekeep/candlekeep/pkg/candles"
)

// addService registers the micro service candlekeep-monitor with its
// health (candles.api.health) and status (candles.api.status) endpoints.
func (m *Monitor) addService() (micro.Service, error) {
	svc, err := micro.AddService(m.o.Conn, micro.Config{
		Name:        ServiceName,
		Version:     m.o.Version,
		Description: "health checks, metrics and alerts of the candlekeep system",
	})
	if err != nil {
		return nil, fmt.Errorf("monitor: add micro service: %w", err)
	}
	add := func(name, subject, desc string, reply func() any) error {
		return svc.AddEndpoint(name, micro.HandlerFunc(func(r micro.Request) {
			data, err := json.Marshal(reply())
			if err != nil {
				_ = r.Error("500", "encode reply", nil)
				return
			}
			if err := r.Respond(data); err != nil {
				m.log.Debug("respond", "endpoint", name, "err", err)
			}
		}), micro.WithEndpointSubject(subject), micro.WithEndpointMetadata(map[string]string{"description": desc}))
	}
	if err := add("health", candles.SubjectAPIHealth, "the six health checks (HealthReport)", func() any { return m.Health() }); err != nil {
		_ = svc.Stop()
		return nil, fmt.Errorf("monitor: add health endpoint: %w", err)
	}
	if err := add("status", candles.SubjectAPIStatus, "runs in progress and the last runs (StatusReport)", func() any { return m.Status() }); err != nil {
		_ = svc.Stop()
		return nil, fmt.Errorf("monitor: add status endpoint: %w", err)
	}
	return svc, nil
}
