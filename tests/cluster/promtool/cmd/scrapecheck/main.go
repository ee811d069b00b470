// Command scrapecheck evaluates PromQL expressions against one scrape of a /metrics page, for
// tests/e2e/monitoring.rs: does every alert and dashboard expression parse and evaluate, and
// does each of its metric selectors return series from a real scrape?
//
//	scrapecheck -scrape metrics.txt -label job=x -label instance=y -exprs exprs.json
//
// metrics.txt is the OpenMetrics text of the scrape. Each sample gets the -label target
// labels (as Prometheus adds them) and is stored twice, 1 minute apart, so that range
// functions (rate, increase) have two points; a series `up` with the target labels and value 1
// is added, as Prometheus does for a successful scrape. exprs.json is a JSON array of
// {"name": ..., "expr": ...}. The answer (stdout) is a JSON array, one object per expression:
// its parse or evaluation error, how many series the whole expression returned, and for each
// vector selector in it how many series it selects and which label names those carry. The
// exit status is non-zero only when the inputs cannot be read; judging the answer is the
// caller's job.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/prometheus/prometheus/model/histogram"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/textparse"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/storage"
	"github.com/prometheus/prometheus/tsdb/chunkenc"
	"github.com/prometheus/prometheus/tsdb/chunks"
	"github.com/prometheus/prometheus/util/annotations"
)

type labelFlags []string

func (l *labelFlags) String() string     { return strings.Join(*l, ",") }
func (l *labelFlags) Set(v string) error { *l = append(*l, v); return nil }

type exprIn struct {
	Name string `json:"name"`
	Expr string `json:"expr"`
}

type selectorOut struct {
	Selector string   `json:"selector"`
	Series   int      `json:"series"`
	Labels   []string `json:"labels"`
	Error    string   `json:"error,omitempty"`
}

type exprOut struct {
	Name       string        `json:"name"`
	Expr       string        `json:"expr"`
	ParseError string        `json:"parse_error,omitempty"`
	EvalError  string        `json:"eval_error,omitempty"`
	Series     int           `json:"series"`
	Selectors  []selectorOut `json:"selectors"`
}

// sample is one float sample (chunks.Sample).
type sample struct {
	t int64
	f float64
}

func (s sample) T() int64                    { return s.t }
func (sample) ST() int64                     { return 0 }
func (s sample) F() float64                  { return s.f }
func (sample) H() *histogram.Histogram       { return nil }
func (sample) FH() *histogram.FloatHistogram { return nil }
func (sample) Type() chunkenc.ValueType      { return chunkenc.ValFloat }
func (s sample) Copy() chunks.Sample         { return s }
func (s samples) Get(i int) chunks.Sample    { return s[i] }
func (s samples) Len() int                   { return len(s) }

type samples []sample

type series struct {
	lset    labels.Labels
	samples samples
}

// memory is a storage.Queryable over a fixed list of series.
type memory struct{ series []series }

func (m *memory) Querier(_, _ int64) (storage.Querier, error) { return m, nil }
func (*memory) Close() error                                  { return nil }
func (*memory) LabelValues(context.Context, string, *storage.LabelHints, ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	return nil, nil, errors.New("label values are not supported")
}
func (*memory) LabelNames(context.Context, *storage.LabelHints, ...*labels.Matcher) ([]string, annotations.Annotations, error) {
	return nil, nil, errors.New("label names are not supported")
}

func (m *memory) Select(_ context.Context, _ bool, _ *storage.SelectHints, ms ...*labels.Matcher) storage.SeriesSet {
	var out []storage.Series
	for _, s := range m.series {
		ok := true
		for _, matcher := range ms {
			if !matcher.Matches(s.lset.Get(matcher.Name)) {
				ok = false
				break
			}
		}
		if ok {
			smp := s.samples
			out = append(out, &storage.SeriesEntry{
				Lset:             s.lset,
				SampleIteratorFn: func(chunkenc.Iterator) chunkenc.Iterator { return storage.NewListSeriesIterator(smp) },
			})
		}
	}
	sort.Slice(out, func(i, j int) bool { return labels.Compare(out[i].Labels(), out[j].Labels()) < 0 })
	return &seriesSet{list: out, i: -1}
}

type seriesSet struct {
	list []storage.Series
	i    int
}

func (s *seriesSet) Next() bool                      { s.i++; return s.i < len(s.list) }
func (s *seriesSet) At() storage.Series              { return s.list[s.i] }
func (*seriesSet) Err() error                        { return nil }
func (*seriesSet) Warnings() annotations.Annotations { return nil }

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "scrapecheck:", err)
		os.Exit(2)
	}
}

func run() error {
	var targetLabels labelFlags
	scrapePath := flag.String("scrape", "", "file with the OpenMetrics text of one scrape")
	exprsPath := flag.String("exprs", "", `JSON file: [{"name": ..., "expr": ...}, ...]`)
	flag.Var(&targetLabels, "label", "NAME=VALUE target label added to every series (repeatable)")
	flag.Parse()
	if *scrapePath == "" || *exprsPath == "" {
		return errors.New("-scrape and -exprs are required")
	}
	target := map[string]string{}
	for _, l := range targetLabels {
		k, v, ok := strings.Cut(l, "=")
		if !ok || k == "" {
			return fmt.Errorf("-label %q is not NAME=VALUE", l)
		}
		target[k] = v
	}
	text, err := os.ReadFile(*scrapePath)
	if err != nil {
		return err
	}
	var exprs []exprIn
	raw, err := os.ReadFile(*exprsPath)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(raw, &exprs); err != nil {
		return fmt.Errorf("%s: %w", *exprsPath, err)
	}

	now := time.Now().Truncate(time.Second)
	t1, t0 := now.UnixMilli(), now.Add(-time.Minute).UnixMilli()
	mem := &memory{}
	add := func(lset labels.Labels, v float64) {
		b := labels.NewBuilder(lset)
		for k, val := range target {
			b.Set(k, val)
		}
		mem.series = append(mem.series, series{lset: b.Labels(), samples: samples{{t0, v}, {t1, v}}})
	}
	if err := load(text, add); err != nil {
		return fmt.Errorf("%s: %w", *scrapePath, err)
	}
	add(labels.FromStrings(labels.MetricName, "up"), 1)

	p := parser.NewParser(parser.Options{})
	engine := promql.NewEngine(promql.EngineOpts{
		MaxSamples:    1_000_000,
		Timeout:       time.Minute,
		LookbackDelta: 5 * time.Minute,
		Parser:        p,
	})
	ctx := context.Background()
	eval := func(q string) (promql.Vector, error) {
		query, err := engine.NewInstantQuery(ctx, mem, nil, q, now)
		if err != nil {
			return nil, err
		}
		defer query.Close()
		res := query.Exec(ctx)
		if res.Err != nil {
			return nil, res.Err
		}
		switch v := res.Value.(type) {
		case promql.Vector:
			return v, nil
		case promql.Scalar:
			return promql.Vector{promql.Sample{T: v.T, F: v.V}}, nil
		default:
			return nil, fmt.Errorf("unexpected result type %s", res.Value.Type())
		}
	}

	out := make([]exprOut, 0, len(exprs))
	for _, e := range exprs {
		o := exprOut{Name: e.Name, Expr: e.Expr, Selectors: []selectorOut{}}
		node, err := p.ParseExpr(e.Expr)
		if err != nil {
			o.ParseError = err.Error()
			out = append(out, o)
			continue
		}
		if v, err := eval(e.Expr); err != nil {
			o.EvalError = err.Error()
		} else {
			o.Series = len(v)
		}
		parser.Inspect(node, func(n parser.Node, _ []parser.Node) error {
			vs, ok := n.(*parser.VectorSelector)
			if !ok {
				return nil
			}
			sel := selectorOut{Selector: vs.String(), Labels: []string{}}
			v, err := eval(sel.Selector)
			if err != nil {
				sel.Error = err.Error()
			} else {
				sel.Series = len(v)
				names := map[string]bool{}
				for _, s := range v {
					s.Metric.Range(func(l labels.Label) { names[l.Name] = true })
				}
				for n := range names {
					sel.Labels = append(sel.Labels, n)
				}
				sort.Strings(sel.Labels)
			}
			o.Selectors = append(o.Selectors, sel)
			return nil
		})
		out = append(out, o)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// load parses an OpenMetrics text and calls add for every float sample.
func load(text []byte, add func(labels.Labels, float64)) error {
	p := textparse.NewOpenMetricsParser(text, labels.NewSymbolTable())
	for {
		entry, err := p.Next()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if entry != textparse.EntrySeries {
			continue
		}
		_, _, v := p.Series()
		var lset labels.Labels
		p.Labels(&lset)
		add(lset, v)
	}
}
