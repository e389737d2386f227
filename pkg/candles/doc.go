// Package candles is candlekeep's shared vocabulary: the subjects and streams
// the services talk over, the versioned JSON messages they exchange (sync
// requests, jobs, candle batches, events), Binance's kline intervals and the
// rules a closed candle must satisfy. Every service imports it so that the
// contract in docs/messages.md lives in exactly one place.
package candles
