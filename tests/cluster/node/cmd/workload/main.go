// Command workload is the container program of the node tests and the restart benchmark.
//
//	workload -name NAME [-log FILE] [-fail-first K] [-fail-after D] [-only NAME] [-fail-code N]
//	         [-trigger DIR] [-run D]
//
// It appends "NAME start <unix nanoseconds>" to FILE (an emptyDir survives an in-place
// restart, a hostPath also a new pod; the run number is the count of NAME lines), then:
//   - exits with -fail-code after -fail-after when the run number is <= -fail-first (and,
//     with -only, NAME is that name);
//   - with -trigger, exits with -fail-code as soon as DIR/NAME exists (after removing it, so
//     the restarted container does not fail again);
//   - else runs for -run (a Go duration, or "forever") and exits 0.
//
// SIGTERM and SIGINT end it with 0 at once (PID 1 of a container needs its own handler).
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	name := flag.String("name", "", "name of this container in the log lines and trigger files")
	logFile := flag.String("log", "", "file to append a start line to (an emptyDir)")
	failFirst := flag.Int("fail-first", 0, "fail runs 1..K")
	failCode := flag.Int("fail-code", 42, "exit code of a failure")
	failAfter := flag.Duration("fail-after", 0, "delay before a -fail-first failure")
	only := flag.String("only", "", "apply -fail-first only when -name is this")
	trigger := flag.String("trigger", "", "fail when DIR/NAME appears")
	run := flag.String("run", "0s", `how long a run that does not fail lasts ("forever" or a Go duration)`)
	flag.Parse()
	if *name == "" {
		fail("-name is required")
	}

	runNumber := 1
	if *logFile != "" {
		n, err := appendStart(*logFile, *name)
		if err != nil {
			fail(err.Error())
		}
		runNumber = n
	}
	fmt.Printf("%s: run %d\n", *name, runNumber)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	if runNumber <= *failFirst && (*only == "" || *only == *name) {
		select {
		case <-stop:
			os.Exit(0)
		case <-time.After(*failAfter):
		}
		fmt.Printf("%s: failing with %d (run %d <= %d)\n", *name, *failCode, runNumber, *failFirst)
		os.Exit(*failCode)
	}

	var done <-chan time.Time
	if *run != "forever" {
		d, err := time.ParseDuration(*run)
		if err != nil {
			fail(fmt.Sprintf("-run %q: %v", *run, err))
		}
		done = time.After(d)
	}
	var poll <-chan time.Time
	if *trigger != "" {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		poll = t.C
	}
	for {
		select {
		case <-stop:
			os.Exit(0)
		case <-done:
			os.Exit(0)
		case <-poll:
			path := filepath.Join(*trigger, *name)
			if err := os.Remove(path); err == nil {
				fmt.Printf("%s: triggered, failing with %d\n", *name, *failCode)
				os.Exit(*failCode)
			}
		}
	}
}

// appendStart appends the start line and returns how many start lines of name the file has.
func appendStart(path, name string) (int, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	if _, err := fmt.Fprintf(f, "%s start %d\n", name, time.Now().UnixNano()); err != nil {
		return 0, err
	}
	if _, err := f.Seek(0, 0); err != nil {
		return 0, err
	}
	n := 0
	s := bufio.NewScanner(f)
	for s.Scan() {
		if strings.HasPrefix(s.Text(), name+" start ") {
			n++
		}
	}
	return n, s.Err()
}

func fail(msg string) {
	fmt.Fprintln(os.Stderr, "workload:", msg)
	os.Exit(2)
}
