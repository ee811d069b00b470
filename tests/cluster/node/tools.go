//go:build tools

// Package tools records the node runtime programs that build.sh compiles from this module
// (containerd, its ctr client and the runc shim), so that `go mod tidy` keeps their
// dependencies in go.mod and go.sum. It is never compiled (build tag `tools`).
package tools

import (
	_ "github.com/containerd/containerd/v2/cmd/containerd"
	_ "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
	_ "github.com/containerd/containerd/v2/cmd/ctr"
)
