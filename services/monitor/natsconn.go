package monitor

import (
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/candlekeep/candlekeep/pkg/candles"
	"github.com/candlekeep/candlekeep/pkg/natsutil"
)

// natsMetrics are the monitor's own connection to NATS:
// candlekeep_nats_connected and candlekeep_nats_reconnects_total, read from
// the connection at each scrape.
func natsMetrics(nc *nats.Conn) []prometheus.Collector {
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "candlekeep_nats_connected",
			Help: "1 while the monitor is connected to NATS, 0 while it is not (it reconnects with backoff)."},
			func() float64 {
				if nc.IsConnected() {
					return 1
				}
				return 0
			}),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "candlekeep_nats_reconnects_total",
			Help: "Times the monitor's NATS connection was re-established after a loss."},
			func() float64 { return float64(nc.Stats().Reconnects) }),
	}
}

// natsState is the monitor's connection as health reports carry it.
func natsState(nc *nats.Conn) *candles.NATSState {
	s := natsutil.StateOf(nc)
	return &candles.NATSState{Connected: s.Connected, Server: s.URL, DisconnectedSince: s.DisconnectedSince, Reconnects: s.Reconnects}
}
