// Command promrules is promtool's `check rules` and `test rules`, and nothing else: the same
// code (checkrules.go and unittest.go are verbatim copies from cmd/promtool of
// github.com/prometheus/prometheus v0.316.0, the version go.mod pins) on the same packages
// (model/rulefmt, rules, promql, promql/promqltest), without the rest of promtool, whose
// service-discovery, TSDB and remote-write commands pull in every cloud SDK. A cold build of
// cmd/promtool took 543 s of CPU (tests/cluster/README.md, "promtool/"); this one a fraction.
//
//	promrules check rules [--lint=duplicate-rules|all|none] [--lint-fatal] FILE...
//	promrules test rules [--run=REGEXP]... [--debug] [--diff] FILE...
//
// Exit status as promtool's: 0 success, 1 failure, 3 lint problems with --lint-fatal, 2 bad
// usage.
package main

import (
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/common/model"
	"github.com/prometheus/common/promslog"

	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/promql/promqltest"
)

// What the copied code expects from promtool's main.go (same values).
var (
	promqlEnableDelayedNameRemoval = false
	logger                         = promslog.New(&promslog.Config{})
)

const (
	successExitCode = 0
	failureExitCode = 1
	lintErrExitCode = 3

	lintOptionAll            = "all"
	lintOptionDuplicateRules = "duplicate-rules"
	lintOptionNone           = "none"

	usageExitCode = 2
)

func init() {
	// As promtool (main.go's init).
	//nolint:staticcheck
	model.NameValidationScheme = model.UTF8Validation
}

type repeated []string

func (r *repeated) String() string     { return fmt.Sprint(*r) }
func (r *repeated) Set(v string) error { *r = append(*r, v); return nil }

func usage() int {
	fmt.Fprintln(os.Stderr, "usage: promrules check rules [--lint=duplicate-rules|all|none] [--lint-fatal] FILE...\n"+
		"       promrules test rules [--run=REGEXP]... [--debug] [--diff] FILE...")
	return usageExitCode
}

func main() { os.Exit(run(os.Args[1:])) }

func run(args []string) int {
	if len(args) < 2 || args[1] != "rules" {
		return usage()
	}
	p := parser.NewParser(parser.Options{})
	switch args[0] {
	case "check":
		fs := flag.NewFlagSet("check rules", flag.ContinueOnError)
		lint := fs.String("lint", lintOptionDuplicateRules, "linting checks: duplicate-rules, all or none")
		lintFatal := fs.Bool("lint-fatal", false, "make lint errors exit with exit code 3")
		if err := fs.Parse(args[2:]); err != nil || fs.NArg() == 0 {
			return usage()
		}
		return CheckRules(newRulesLintConfig(*lint, *lintFatal, false, model.UTF8Validation), p, fs.Args()...)
	case "test":
		fs := flag.NewFlagSet("test rules", flag.ContinueOnError)
		var runs repeated
		fs.Var(&runs, "run", "only run test groups whose names match this regular expression (repeatable)")
		debug := fs.Bool("debug", false, "enable unit test debugging")
		diff := fs.Bool("diff", false, "print a diff of expected and received output")
		if err := fs.Parse(args[2:]); err != nil || fs.NArg() == 0 {
			return usage()
		}
		var runStrings []string
		if len(runs) > 0 {
			runStrings = runs
		}
		// The query options of promtool's `test rules`.
		return RulesUnitTestResult(io.Discard,
			promqltest.LazyLoaderOpts{
				EnableAtModifier:         true,
				EnableNegativeOffset:     true,
				EnableDelayedNameRemoval: promqlEnableDelayedNameRemoval,
			},
			p, runStrings, *diff, *debug, false, fs.Args()...)
	default:
		return usage()
	}
}

// parseTime is cmd/promtool/query.go's (v0.316.0, lines 242-251), which unittest.go uses for
// `start_timestamp`.
func parseTime(s string) (time.Time, error) {
	if t, err := strconv.ParseFloat(s, 64); err == nil {
		s, ns := math.Modf(t)
		return time.Unix(int64(s), int64(ns*float64(time.Second))).UTC(), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("cannot parse %q to a valid timestamp", s)
}
