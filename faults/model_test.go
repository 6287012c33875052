package faults

// The stock model for porcupine. The state is the units left. An op is a
// deduction (id, qty) that answered ok (units >= qty, takes them),
// sold_out (units < qty: with nothing released during a case, stock only
// goes down, so sold_out may not be answered while qty units are free) or
// nothing definite (either outcome). Retries of one request id are one op
// spanning all its attempts. The history ends with one read of what is
// left, taken from MySQL once write-back has drained: total minus the
// units of every detail row. It ties the buyers' answers to the books:
// the ops without a definite answer must account exactly for the rows no
// buyer was told about.

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

type stockIn struct {
	read bool
	id   string
	qty  int64
}

type stockOut struct {
	status string // ok, sold_out, unknown; "" for a read
	left   int64  // a read's answer
}

func stockModel(total int64) porcupine.Model {
	m := &porcupine.NondeterministicModel{
		Init: func() []any { return []any{total} },
		Step: func(state, input, output any) []any {
			s, in, out := state.(int64), input.(stockIn), output.(stockOut)
			if in.read {
				if s == out.left {
					return []any{s}
				}
				return nil
			}
			switch out.status {
			case statusOK:
				if s >= in.qty {
					return []any{s - in.qty}
				}
				return nil
			case statusSoldOut:
				if s < in.qty {
					return []any{s}
				}
				return nil
			default:
				if s >= in.qty {
					return []any{s, s - in.qty}
				}
				return []any{s}
			}
		},
		Equal: func(a, b any) bool { return a.(int64) == b.(int64) },
		DescribeOperation: func(input, output any) string {
			in, out := input.(stockIn), output.(stockOut)
			if in.read {
				return fmt.Sprintf("left() -> %d", out.left)
			}
			return fmt.Sprintf("deduct(%s, %d) -> %s", in.id, in.qty, out.status)
		},
		DescribeState: func(state any) string { return fmt.Sprint(state.(int64)) },
	}
	return m.ToModel()
}

// linearizability is the outcome of a check.
type linearizability struct {
	Result   porcupine.CheckResult
	Ops      int
	Took     time.Duration
	Visual   string // HTML visualisation of a failed check
	Unknowns int
}

// checkLinearizable checks ops against the stock model. left is the read
// at the end (units not deducted according to MySQL), taken at readAt,
// after every op returned or its request had timed out for good; ops
// without a definite answer end just before it.
func checkLinearizable(t *testing.T, name string, total int64, ops []*op, left int64, readAt time.Duration) linearizability {
	t.Helper()
	var hist []porcupine.Operation
	unknowns := 0
	clients := 0
	for _, o := range ops {
		ret := o.Return
		out := stockOut{status: o.Status}
		if ret < 0 || o.Status == statusUnknown {
			out.status = statusUnknown
			ret = readAt - 1
			unknowns++
		}
		hist = append(hist, porcupine.Operation{
			ClientId: o.Client, Input: stockIn{id: o.ID, qty: o.Qty}, Output: out,
			Call: int64(o.Call), Return: int64(ret),
		})
		clients = max(clients, o.Client+1)
	}
	hist = append(hist, porcupine.Operation{
		ClientId: clients, Input: stockIn{read: true}, Output: stockOut{left: left},
		Call: int64(readAt), Return: int64(readAt) + 1,
	})
	start := time.Now()
	res, info := porcupine.CheckOperationsVerbose(stockModel(total), hist, time.Minute)
	l := linearizability{Result: res, Ops: len(hist), Took: time.Since(start), Unknowns: unknowns}
	if res != porcupine.Ok {
		dir, _ := os.MkdirTemp("", "stockd-faults-porcupine")
		l.Visual = filepath.Join(dir, strings.ReplaceAll(name, "/", "_")+".html")
		if err := porcupine.VisualizePath(stockModel(total), info, l.Visual); err != nil {
			l.Visual = "(visualisation failed: " + err.Error() + ")"
		}
	}
	return l
}

// The checker itself: it accepts a history that a correct counter could
// give and rejects an oversell, a sold_out while units were free, and a
// read that disagrees with the answers.
func TestStockModel(t *testing.T) {
	ms := time.Millisecond
	mk := func(client int, id string, qty int64, status string, call, ret time.Duration) *op {
		return &op{Client: client, ID: id, Qty: qty, Status: status, Call: call, Return: ret}
	}
	cases := []struct {
		name  string
		total int64
		ops   []*op
		left  int64
		want  porcupine.CheckResult
	}{
		{"sequential sale", 3, []*op{
			mk(0, "a", 2, statusOK, 0, 1*ms), mk(0, "b", 2, statusSoldOut, 2*ms, 3*ms), mk(0, "c", 1, statusOK, 4*ms, 5*ms),
		}, 0, porcupine.Ok},
		{"concurrent, sold_out placed after the oks", 2, []*op{
			mk(0, "a", 1, statusSoldOut, 0, 10*ms), mk(1, "b", 1, statusOK, 1*ms, 2*ms), mk(2, "c", 1, statusOK, 1*ms, 3*ms),
		}, 0, porcupine.Ok},
		{"oversold", 2, []*op{
			mk(0, "a", 1, statusOK, 0, 1*ms), mk(1, "b", 1, statusOK, 0, 1*ms), mk(2, "c", 1, statusOK, 0, 1*ms),
		}, 0, porcupine.Illegal},
		{"sold_out while a unit was free", 2, []*op{
			mk(0, "a", 1, statusOK, 0, 1*ms), mk(0, "b", 1, statusSoldOut, 2*ms, 3*ms), mk(0, "c", 1, statusOK, 4*ms, 5*ms),
		}, 0, porcupine.Illegal},
		{"an unanswered op that took", 2, []*op{
			mk(0, "a", 1, statusUnknown, 0, -1), mk(1, "b", 1, statusOK, 1*ms, 2*ms),
		}, 0, porcupine.Ok},
		{"an unanswered op that did not take", 2, []*op{
			mk(0, "a", 1, statusUnknown, 0, -1), mk(1, "b", 1, statusOK, 1*ms, 2*ms),
		}, 1, porcupine.Ok},
		{"books hold more than the answers allow", 3, []*op{
			mk(0, "a", 1, statusOK, 0, 1*ms), mk(1, "b", 1, statusOK, 0, 1*ms),
		}, 0, porcupine.Illegal},
		{"books hold less than the answers say", 3, []*op{
			mk(0, "a", 1, statusOK, 0, 1*ms), mk(1, "b", 1, statusOK, 0, 1*ms),
		}, 2, porcupine.Illegal},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := checkLinearizable(t, "model-"+c.name, c.total, c.ops, c.left, 100*ms)
			if got.Result != c.want {
				t.Fatalf("got %s, want %s", got.Result, c.want)
			}
		})
	}
}

// unknownIDs lists the ops that never got a definite answer.
func unknownIDs(ops []*op, n int) string {
	var ids []string
	for _, o := range ops {
		if o.Status == statusUnknown {
			ids = append(ids, o.ID)
		}
	}
	sort.Strings(ids)
	if len(ids) > n {
		ids = append(ids[:n], "...")
	}
	return strings.Join(ids, ",")
}
