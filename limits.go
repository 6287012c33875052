package stockd

// Limits on a SKU's parameters: the admin API checks what a PUT asks for,
// the configuration checks its SKU defaults.
const (
	// MaxTotal bounds a SKU's total units.
	MaxTotal = 1_000_000_000_000
	// MaxChunk bounds the units one refill moves into a sub-domain.
	MaxChunk = 1_000_000_000
	// MaxPartitions bounds the partitions of one SKU.
	MaxPartitions = 256
)
