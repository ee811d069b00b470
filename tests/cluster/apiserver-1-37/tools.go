//go:build tools

// Package tools records the program that build.sh compiles from this module (a
// kube-apiserver of Kubernetes v1.37.2, beside the control plane's own), so that `go mod tidy`
// keeps its dependencies in go.mod and go.sum. It is never compiled (build tag `tools`).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
