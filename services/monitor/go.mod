module github.com/candlekeep/candlekeep/services/monitor

go 1.26.0

require github.com/candlekeep/candlekeep/pkg v0.0.0-00010101000000-000000000000

replace github.com/candlekeep/candlekeep/pkg => ../../pkg
