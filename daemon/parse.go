package daemon

// fastDeduct is the deduct body as the fast parser read it. Its slices
// point into the request body.
type fastDeduct struct {
	sku, requestID, userID []byte
	hasSKU, hasQty, hasReq bool
	hasUser                bool
	qty                    int64
}

// parseDeductFast reads the common shape of a deduct body, a flat JSON
// object of plain strings and integers, without allocating. It reports
// false for anything it does not handle on its own (escapes, nested
// values, fractions, exponents, leading zeros, huge numbers, malformed
// JSON); the caller then parses with encoding/json, which gives the exact
// error. Whatever it accepts, encoding/json would read the same way.
func parseDeductFast(b []byte, out *fastDeduct) bool {
	i := skipWS(b, 0)
	if i >= len(b) || b[i] != '{' {
		return false
	}
	i = skipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return skipWS(b, i+1) == len(b)
	}
	for {
		key, j, ok := plainString(b, i)
		if !ok {
			return false
		}
		i = skipWS(b, j)
		if i >= len(b) || b[i] != ':' {
			return false
		}
		i = skipWS(b, i+1)
		if i >= len(b) {
			return false
		}
		switch string(key) { // no allocation: the compiler compares in place
		case "sku", "request_id", "user_id":
			v, j, ok := plainString(b, i)
			if !ok {
				return false
			}
			switch string(key) {
			case "sku":
				out.sku, out.hasSKU = v, true
			case "request_id":
				out.requestID, out.hasReq = v, true
			default:
				out.userID, out.hasUser = v, true
			}
			i = j
		case "qty":
			n, j, ok := plainInt(b, i)
			if !ok {
				return false
			}
			out.qty, out.hasQty = n, true
			i = j
		default:
			// encoding/json matches keys case-insensitively ("SKU" is sku):
			// leave those to it.
			if foldsToKnown(key) {
				return false
			}
			// Unknown key: only a plain scalar is skipped here.
			j, ok := skipScalar(b, i)
			if !ok {
				return false
			}
			i = j
		}
		i = skipWS(b, i)
		if i >= len(b) {
			return false
		}
		switch b[i] {
		case ',':
			i = skipWS(b, i+1)
		case '}':
			return skipWS(b, i+1) == len(b)
		default:
			return false
		}
	}
}

func skipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// plainString reads a string without escapes or control characters and
// returns its contents and the index after its closing quote.
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

// skipScalar skips a plain string, integer, true, false or null.
func skipScalar(b []byte, i int) (int, bool) {
	switch {
	case b[i] == '"':
		_, j, ok := plainString(b, i)
		return j, ok
	case b[i] == '-' || (b[i] >= '0' && b[i] <= '9'):
		_, j, ok := plainInt(b, i)
		return j, ok
	}
	for _, lit := range [...]string{"true", "false", "null"} {
		if len(b)-i >= len(lit) && string(b[i:i+len(lit)]) == lit {
			return i + len(lit), true
		}
	}
	return 0, false
}

// foldsToKnown tells whether key is a known key in another case.
func foldsToKnown(key []byte) bool {
	for _, k := range [...]string{"sku", "qty", "request_id", "user_id"} {
		if len(key) != len(k) {
			continue
		}
		same := true
		for i := 0; i < len(k); i++ {
			c := key[i]
			if c >= 'A' && c <= 'Z' {
				c += 'a' - 'A'
			}
			if c != k[i] {
				same = false
				break
			}
		}
		if same {
			return true
		}
	}
	return false
}
