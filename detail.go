package stockd

import (
	"fmt"
	"strconv"
	"strings"
)

// DetailID names one deduction everywhere (the key of its MySQL row, its
// reservation token, the ledger): "sku:pid:epoch:seq", with the SKU, the
// partition, the partition's epoch and the partition's sequence number.
// A SKU name has no ':' (ident.ValidSKU), so the id splits back.
func DetailID(sku string, pid int, epoch, seq int64) string {
	return DetailPrefix(sku, pid, epoch) + strconv.FormatInt(seq, 10)
}

// DetailPrefix is what every detail id of one partition incarnation (sku,
// pid, epoch) starts with: "sku:pid:epoch:".
func DetailPrefix(sku string, pid int, epoch int64) string {
	return sku + ":" + strconv.Itoa(pid) + ":" + strconv.FormatInt(epoch, 10) + ":"
}

// ParseDetailID splits a detail id made by DetailID (the SKU it returns
// shares the id's memory: the write-back parses every detail of a batch).
func ParseDetailID(id string) (sku string, pid int, epoch, seq int64, err error) {
	sku, rest, ok1 := strings.Cut(id, ":")
	ps, rest, ok2 := strings.Cut(rest, ":")
	es, ss, ok3 := strings.Cut(rest, ":")
	if !ok1 || !ok2 || !ok3 || strings.Contains(ss, ":") {
		return "", 0, 0, 0, fmt.Errorf("detail id %q: want sku:pid:epoch:seq", id)
	}
	if pid, err = strconv.Atoi(ps); err != nil {
		return "", 0, 0, 0, fmt.Errorf("detail id %q: pid: %w", id, err)
	}
	if epoch, err = strconv.ParseInt(es, 10, 64); err != nil {
		return "", 0, 0, 0, fmt.Errorf("detail id %q: epoch: %w", id, err)
	}
	if seq, err = strconv.ParseInt(ss, 10, 64); err != nil {
		return "", 0, 0, 0, fmt.Errorf("detail id %q: seq: %w", id, err)
	}
	return sku, pid, epoch, seq, nil
}
