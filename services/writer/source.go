package writer

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/candlekeep/candlekeep/pkg/store"
)

// SourceBinder binds a database to the exchange it is filled from
// (pkg/store implements it).
type SourceBinder interface {
	BindSource(ctx context.Context, source string, rebind bool) (store.Binding, string, error)
}

var _ SourceBinder = (*store.Store)(nil)

func validSource(s string) bool {
	_, err := store.CanonicalSource(s)
	return err == nil
}

// bindSource checks the database against Options.Source before anything is
// consumed, so a database is never filled from two exchanges.
func (w *Writer) bindSource(ctx context.Context) error {
	if w.o.Source == "" {
		return nil
	}
	b, ok := w.o.Store.(SourceBinder)
	if !ok {
		return fmt.Errorf("writer: Source is set but the store cannot record it")
	}
	return BindSource(ctx, b, w.o.Source, w.o.RebindSource, w.log)
}

// BindSource binds db to source (see store.Store.BindSource) and logs what
// changed; `candlekeep up` calls it before it starts anything, the writer
// before it consumes.
func BindSource(ctx context.Context, db SourceBinder, source string, rebind bool, log *slog.Logger) error {
	binding, previous, err := db.BindSource(ctx, source, rebind)
	if err != nil {
		return fmt.Errorf("writer: %w", err)
	}
	canon, _ := store.CanonicalSource(source)
	switch binding {
	case store.BoundNew:
		log.Info("database bound to its exchange", "source", canon)
	case store.Rebound:
		log.Warn("database rebound to another exchange (--rebind-source): candles stored before come from the old one",
			"source", canon, "previous_source", previous)
	}
	return nil
}
