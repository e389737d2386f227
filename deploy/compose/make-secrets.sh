#!/usr/bin/env bash
# Generates the compose stack's secrets into DIR (default
# deploy/compose/secrets; `make secrets` runs it): candlekeep auth init's
# accounts, one nkey per service and the nats CLI contexts (owned by the
# containers' user 65532, files 0600), then cluster.conf: the route
# authorization plus the routes between nats-1..3 carrying the route
# password, Grafana's admin password, and monitor.env, the monitor's alert
# receivers (commented out until you fill them in). Existing files are kept
# (rotate: docs/deploy.md).
# Usage: make-secrets.sh CANDLEKEEP_BINARY [DIR]
set -euo pipefail
bin=$1 dir=${2:-$(dirname "$0")/secrets}
owner=${CANDLEKEEP_SECRETS_OWNER:-65532:65532}
if [ ! -e "$dir/auth.conf" ]; then
	"$bin" auth init --dir "$dir" --owner "$owner" \
		--servers nats://127.0.0.1:${NATS_1_PORT:-4222},nats://127.0.0.1:${NATS_2_PORT:-4223},nats://127.0.0.1:${NATS_3_PORT:-4224}
fi
umask 077
if [ ! -e "$dir/cluster.conf" ]; then
	pw=$(sed -n 's/^ *password: *"\(.*\)"$/\1/p' "$dir/routes.conf")
	[ -n "$pw" ] || { echo "make-secrets: no route password in $dir/routes.conf" >&2; exit 1; }
	{
		cat "$dir/routes.conf"
		echo "routes = ["
		for n in 1 2 3; do echo "  nats-route://route:$pw@nats-$n:6222"; done
		echo "]"
	} >"$dir/cluster.conf"
	chown "$owner" "$dir/cluster.conf" 2>/dev/null || true
fi
if [ ! -e "$dir/monitor.env" ]; then
	# The monitor's alert receivers (an env file: compose reads it on the
	# host and passes the variables to the monitor alone).
	cat >"$dir/monitor.env" <<'ENV'
# The candlekeep monitor's alert receivers (docs/alerts.md). Uncomment
# what you use, then: docker-compose ... up -d monitor
#CANDLEKEEP_SLACK_WEBHOOK_URL=https://hooks.slack.com/services/T000/B000/XXXX
#CANDLEKEEP_PAGERDUTY_ROUTING_KEY=
#CANDLEKEEP_SMTP_ADDR=smtp.example.com:587
#CANDLEKEEP_SMTP_FROM=candlekeep@example.com
#CANDLEKEEP_SMTP_TO=oncall@example.com
#CANDLEKEEP_SMTP_USERNAME=
#CANDLEKEEP_SMTP_PASSWORD=
ENV
fi
if [ ! -e "$dir/grafana_admin_password" ]; then
	head -c 18 /dev/urandom | base64 | tr '+/' '-_' >"$dir/grafana_admin_password"
	chown 472:0 "$dir/grafana_admin_password" 2>/dev/null || true
fi
echo "secrets in $dir; operator context: nats --context $dir/context/operator.json stream ls"
