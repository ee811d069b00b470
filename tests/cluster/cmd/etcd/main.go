// Command etcd is the etcd server (go.etcd.io/etcd/server/v3, the version pinned in
// ../../go.mod), built from the same module graph as kube-apiserver for the end-to-end
// tests. It accepts the flags of the upstream etcd binary.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
