//go:build tools

// Package tools records the Helm CLI that build.sh compiles from this module (for the
// chart tests in tests/e2e/helm.rs), so that `go mod tidy` keeps its dependencies in
// go.mod and go.sum. It is never compiled (build tag `tools`).
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
