//go:build tools

// Package tools records the Kubeflow Trainer controller manager that build.sh compiles from
// this module (`build.sh --module trainer`), so that `go mod tidy` keeps its dependencies in
// go.mod and go.sum. Kept apart from the control plane's module so that Trainer's dependency
// versions never move kube-apiserver's. It is never compiled (build tag `tools`).
package tools

import (
	_ "github.com/kubeflow/trainer/v2/cmd/trainer-controller-manager"
)
