//go:build !linux

package backup

import "log/slog"

// lowerPriority does nothing where threads have no priority of their own.
func lowerPriority(*slog.Logger) {}
