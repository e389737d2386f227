// Package monitor is candlekeep's operator view: it learns the state of the
// system from NATS alone (the EVENTS stream, JetStream advisories and
// consumer info, the services' micro endpoints and the database owner's
// candles.api.database), runs the six health checks, serves Prometheus
// metrics, /healthz and /readyz, evaluates the eleven alert rules and sends
// their notifications (package notify). docs/monitoring.md describes it.
package monitor
