// Command pause is the pod sandbox ("infra") container of the node tests: it blocks until
// SIGTERM or SIGINT. As PID 1 of a PID namespace it must handle the signals itself (the
// kernel drops signals that PID 1 has no handler for).
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
