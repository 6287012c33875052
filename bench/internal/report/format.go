package report

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Median is the median of xs (0 for none).
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// FmtInt writes v rounded, with thousands separators (1,234,567).
func FmtInt(v float64) string {
	s := strconv.FormatInt(int64(v+0.5), 10)
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	return string(out)
}

func fmtMs(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v < 1:
		return strconv.FormatFloat(v, 'f', 3, 64)
	case v < 10:
		return strconv.FormatFloat(v, 'f', 2, 64)
	case v < 100:
		return strconv.FormatFloat(v, 'f', 1, 64)
	}
	return strconv.FormatFloat(v, 'f', 0, 64)
}

func fmtRatio(a, b float64) string {
	if b <= 0 {
		return "–"
	}
	r := a / b
	switch {
	case r < 10:
		return strconv.FormatFloat(r, 'f', 2, 64) + "×"
	case r < 100:
		return strconv.FormatFloat(r, 'f', 1, 64) + "×"
	}
	return strconv.FormatFloat(r, 'f', 0, 64) + "×"
}

// fmtSec prints CPU seconds with 3 significant digits.
func fmtSec(v float64, ok bool) string {
	if !ok {
		return "–"
	}
	if v == 0 {
		return "0"
	}
	return strconv.FormatFloat(v, 'g', 3, 64)
}

func fmtUs(v float64) string {
	if v >= 100 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

func fmtBatch(calls, reqs float64) string {
	if calls <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f", reqs/calls)
}

func fmtPipe(v float64) string {
	if v <= 0 {
		return "–"
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return strconv.Itoa(n) + " " + word + "s"
}

func joinInts(xs []int) string {
	var s []string
	for _, x := range xs {
		s = append(s, strconv.Itoa(x))
	}
	return strings.Join(s, " and ")
}

// spread is max/min - 1 of xs (0 for fewer than 2).
func spread(xs ...float64) float64 {
	if len(xs) < 2 || slices.Min(xs) <= 0 {
		return 0
	}
	return slices.Max(xs)/slices.Min(xs) - 1
}

// legend writes the rows' names and titles: "**name** = title; …".
func legend[T any](p printer, rows []T, nameTitle func(T) (string, string)) {
	for i, r := range rows {
		if i > 0 {
			p("; ")
		}
		n, t := nameTitle(r)
		p("**%s** = %s", n, t)
	}
}
