package stockd

import "errors"

// Sentinels shared by several packages; callers decide with errors.Is.
// Packages wrap them with the name at hand ("unknown sku: S1"), so the
// messages below are the start of what users see.
var (
	// ErrUnknownSKU: no such SKU (in MySQL, or in a node's registry).
	ErrUnknownSKU = errors.New("unknown sku")
	// ErrUnknownShard: no such shard (in MySQL, or in a node's shard set).
	ErrUnknownShard = errors.New("unknown shard")
)
