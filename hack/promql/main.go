// promql-check parses PromQL expressions with Prometheus' own parser and says, for each, what it
// selects: the metric name and the label names each vector or matrix selector matches on.
//
// Input (stdin): a JSON array of expressions. Output (stdout): a JSON array, one object per
// expression, {"error": "..."} or {"selectors": [{"metric": "...", "labels": ["..."]}]}.
// Exit status 0 whenever the input was read, whatever the expressions; the caller judges them.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"

	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

type selector struct {
	Metric string   `json:"metric"`
	Labels []string `json:"labels"`
}

type result struct {
	Error     string     `json:"error,omitempty"`
	Selectors []selector `json:"selectors"`
}

func check(p parser.Parser, expr string) result {
	ast, err := p.ParseExpr(expr)
	if err != nil {
		return result{Error: err.Error(), Selectors: []selector{}}
	}
	found := []selector{}
	parser.Inspect(ast, func(node parser.Node, _ []parser.Node) error {
		if vs, ok := node.(*parser.VectorSelector); ok {
			sel := selector{Metric: vs.Name, Labels: []string{}}
			for _, m := range vs.LabelMatchers {
				if m.Name == labels.MetricName {
					if sel.Metric == "" && m.Type == labels.MatchEqual {
						sel.Metric = m.Value
					}
					continue
				}
				sel.Labels = append(sel.Labels, m.Name)
			}
			sort.Strings(sel.Labels)
			found = append(found, sel)
		}
		return nil
	})
	return result{Selectors: found}
}

func main() {
	var exprs []string
	if err := json.NewDecoder(os.Stdin).Decode(&exprs); err != nil {
		fmt.Fprintf(os.Stderr, "promql-check: stdin is not a JSON array of strings: %v\n", err)
		os.Exit(2)
	}
	p := parser.NewParser(parser.Options{})
	results := make([]result, 0, len(exprs))
	for _, expr := range exprs {
		results = append(results, check(p, expr))
	}
	if err := json.NewEncoder(os.Stdout).Encode(results); err != nil {
		fmt.Fprintf(os.Stderr, "promql-check: %v\n", err)
		os.Exit(1)
	}
}
