//go:build tools

// Package tools pins the Prometheus packages that cmd/promrules and cmd/scrapecheck use, so
// that `go mod tidy` keeps exactly their dependencies. It is never compiled (build tag
// `tools`).
package tools

import (
	_ "github.com/prometheus/prometheus/promql/promqltest"
	_ "github.com/prometheus/prometheus/rules"
)
