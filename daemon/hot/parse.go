package hot

import "github.com/stockd/stockd/internal/strictjson"

// The deduct body's keys, in their only accepted spelling; bit i of
// fastDeduct.seen is deductKeys[i].
const (
	keySKU = iota
	keyQty
	keyRequestID
	keyUserID
)

var deductKeys = [...]string{keySKU: "sku", keyQty: "qty", keyRequestID: "request_id", keyUserID: "user_id"}

// fastDeduct is the deduct body as scanDeduct read it. Its slices point
// into the request body.
type fastDeduct struct {
	sku, requestID, userID []byte
	qty                    int64
	seen                   uint8 // bit per deductKeys index
	// slow is set when a value is not a plain string (no escapes, ASCII)
	// or a plain integer: encoding/json then decodes the values, and gives
	// the exact error for a wrong one. The keys are checked either way.
	slow bool
}

func (f *fastDeduct) has(k int) bool { return f.seen&(1<<k) != 0 }

// scanDeduct reads a deduct body, a flat JSON object, without allocating
// on success. Its keys are checked byte-exactly: a key that is not one of
// deductKeys in its exact spelling (a case variant, a look-alike such as
// the Kelvin sign), a key repeated, or a key written with a JSON escape is
// a *strictjson.KeyError naming it; malformed JSON is strictjson.ErrSyntax
// (or ErrNotObject). Plain values are read in place; any other value of a
// known key sets slow and is skipped.
func scanDeduct(b []byte, out *fastDeduct) error {
	i := strictjson.SkipWS(b, 0)
	if i >= len(b) {
		return strictjson.ErrSyntax
	}
	if b[i] != '{' {
		return strictjson.Check(b, nil) // ErrNotObject or ErrSyntax
	}
	i = strictjson.SkipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return trailing(b, i+1)
	}
	for {
		key, j, escaped, ok := strictjson.ReadKey(b, i)
		if !ok {
			return strictjson.ErrSyntax
		}
		if escaped {
			return strictjson.NewKeyError(key, strictjson.Escaped)
		}
		k := -1
		switch string(key) { // no allocation: the compiler compares in place
		case "sku":
			k = keySKU
		case "qty":
			k = keyQty
		case "request_id":
			k = keyRequestID
		case "user_id":
			k = keyUserID
		default:
			return strictjson.NewKeyError(key, strictjson.Unknown)
		}
		if out.has(k) {
			return strictjson.NewKeyError(key, strictjson.Duplicate)
		}
		out.seen |= 1 << k
		i = j
		if j, ok = plainValue(b, i, k, out); !ok {
			out.slow = true
			if j, ok = strictjson.SkipValue(b, i); !ok {
				return strictjson.ErrSyntax
			}
		}
		i = strictjson.SkipWS(b, j)
		if i >= len(b) {
			return strictjson.ErrSyntax
		}
		switch b[i] {
		case ',':
			i = strictjson.SkipWS(b, i+1)
		case '}':
			return trailing(b, i+1)
		default:
			return strictjson.ErrSyntax
		}
	}
}

// plainValue reads the value of key k at b[i] if it is plain: a string
// without escapes, controls or non-ASCII bytes for sku, request_id and
// user_id, an integer without fraction, exponent or leading zeros that
// fits in int64 for qty.
func plainValue(b []byte, i, k int, out *fastDeduct) (int, bool) {
	if k == keyQty {
		n, j, ok := plainInt(b, i)
		if ok {
			out.qty = n
		}
		return j, ok
	}
	v, j, ok := plainString(b, i)
	if !ok {
		return 0, false
	}
	switch k {
	case keySKU:
		out.sku = v
	case keyRequestID:
		out.requestID = v
	default:
		out.userID = v
	}
	return j, true
}

func trailing(b []byte, i int) error {
	if strictjson.SkipWS(b, i) != len(b) {
		return strictjson.ErrSyntax
	}
	return nil
}

// plainString reads a string without escapes, control characters or
// non-ASCII bytes and returns its contents and the index after its
// closing quote.
func plainString(b []byte, i int) ([]byte, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return nil, 0, false
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return b[i+1 : j], j + 1, true
		case c == '\\' || c < 0x20 || c >= 0x80:
			return nil, 0, false // escapes, controls, non-ASCII: the slow path
		}
	}
	return nil, 0, false
}

// plainInt reads an optionally negative integer without leading zeros,
// fraction or exponent, that fits in int64.
func plainInt(b []byte, i int) (int64, int, bool) {
	neg := false
	if i < len(b) && b[i] == '-' {
		neg = true
		i++
	}
	start := i
	var n int64
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		if i-start >= 18 {
			return 0, 0, false
		}
		n = n*10 + int64(b[i]-'0')
		i++
	}
	if i == start || (b[start] == '0' && i-start > 1) {
		return 0, 0, false
	}
	if i < len(b) && (b[i] == '.' || b[i] == 'e' || b[i] == 'E') {
		return 0, 0, false
	}
	if neg {
		n = -n
	}
	return n, i, true
}
