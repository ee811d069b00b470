//go:build tools

// Package tools records the Kueue manager that build.sh compiles from this module
// (`build.sh --module kueue`), so that `go mod tidy` keeps its dependencies in go.mod and
// go.sum. Kept apart from the control plane's module so that Kueue's dependency versions
// never move kube-apiserver's. It is never compiled (build tag `tools`).
package tools

import (
	_ "sigs.k8s.io/kueue/cmd/kueue"
)
