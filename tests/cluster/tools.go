//go:build tools

// Package tools records the control-plane programs that build.sh compiles from this
// module, so that `go mod tidy` keeps their dependencies in go.mod and go.sum.
// It is never compiled (build tag `tools`).
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "sigs.k8s.io/jobset"
)
