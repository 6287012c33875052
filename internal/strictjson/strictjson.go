// Package strictjson checks the keys of a JSON request body byte for byte
// before encoding/json decodes it. encoding/json matches keys without
// regard to case (and folds look-alikes such as the Kelvin sign U+212A to
// "k") and lets the last of duplicate keys win, so a body can mean one thing
// to a gateway that compared keys exactly and another to stockd. Here a key
// is accepted only in its exact spelling, once per object, and without
// escapes: a key written with a JSON escape ("s\u006bu") is refused, not
// decoded, because no honest client escapes a plain ASCII name and a
// byte-comparing gateway would not recognise it.
//
// The scanner also validates the JSON it walks (strings, numbers,
// literals, nesting up to MaxDepth), so that the keys it sees are the keys
// encoding/json sees; the fuzz tests hold it to encoding/json.
package strictjson

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
)

// MaxDepth is the deepest nesting of arrays and objects accepted.
const MaxDepth = 32

var (
	// ErrSyntax is malformed JSON (or nesting deeper than MaxDepth).
	ErrSyntax = errors.New("body: malformed JSON")
	// ErrNotObject is valid JSON that is not an object.
	ErrNotObject = errors.New("body: want a JSON object")
)

// Key problems, as KeyError.Reason.
const (
	Unknown   = "unknown key"
	Duplicate = "duplicate key"
	Escaped   = "escaped key"
)

// KeyError is a refused key. Key is the key as written between its quotes
// (escapes not decoded).
type KeyError struct {
	Key    string
	Reason string // Unknown, Duplicate or Escaped
}

// Error is `body: unknown key "QTY"`; the key is quoted as JSON quotes it.
func (e *KeyError) Error() string {
	q, _ := json.Marshal(e.Key) // a string always marshals
	return "body: " + e.Reason + " " + string(q)
}

// maxReportedKey bounds the key a KeyError repeats back to the caller.
const maxReportedKey = 64

// NewKeyError returns the error for a refused key.
func NewKeyError(key []byte, reason string) *KeyError {
	if len(key) > maxReportedKey {
		key = key[:maxReportedKey]
	}
	return &KeyError{Key: string(key), Reason: reason}
}

// Keys are the keys an object may have. A key's value is the Keys of the
// object it holds, or nil when it holds no object (or its members are not
// checked: only objects reached through objects are).
type Keys map[string]Keys

// KeysOf returns the Keys of a struct type from its json tags; fields of
// struct type (or pointer to struct) give nested Keys. It panics on a
// slice or map of structs, whose objects it could not check.
func KeysOf(v any) Keys {
	t := reflect.TypeOf(v)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return keysOf(t)
}

func keysOf(t reflect.Type) Keys {
	k := Keys{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if !f.IsExported() || name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		switch ft.Kind() {
		case reflect.Struct:
			k[name] = keysOf(ft)
		case reflect.Slice, reflect.Array, reflect.Map:
			if e := ft.Elem(); e.Kind() == reflect.Struct || (e.Kind() == reflect.Pointer && e.Elem().Kind() == reflect.Struct) {
				panic("strictjson: objects inside " + ft.String() + " are not checked")
			}
			k[name] = nil
		default:
			k[name] = nil
		}
	}
	return k
}

// Check reads b, which must be one JSON object and nothing else but white
// space, and returns a *KeyError for the first key not in keys (at its
// level), repeated in its object, or written with an escape; ErrSyntax or
// ErrNotObject for a body that is not a well-formed object.
func Check(b []byte, keys Keys) error {
	i := SkipWS(b, 0)
	if i >= len(b) {
		return ErrSyntax
	}
	if b[i] != '{' {
		if j, ok := SkipValue(b, i); ok && SkipWS(b, j) == len(b) {
			return ErrNotObject
		}
		return ErrSyntax
	}
	j, err := checkObject(b, i, keys, 1)
	if err != nil {
		return err
	}
	if SkipWS(b, j) != len(b) {
		return ErrSyntax
	}
	return nil
}

// checkObject checks the object at b[i] ('{') and returns the index after
// it.
func checkObject(b []byte, i int, keys Keys, depth int) (int, error) {
	if depth > MaxDepth {
		return 0, ErrSyntax
	}
	var seen []string // an object has few keys
	i = SkipWS(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, nil
	}
	for {
		key, j, escaped, ok := ReadKey(b, i)
		if !ok {
			return 0, ErrSyntax
		}
		if escaped {
			return 0, NewKeyError(key, Escaped)
		}
		sub, known := keys[string(key)]
		if !known {
			return 0, NewKeyError(key, Unknown)
		}
		for _, s := range seen {
			if s == string(key) {
				return 0, NewKeyError(key, Duplicate)
			}
		}
		seen = append(seen, string(key))
		i = SkipWS(b, j)
		if i >= len(b) {
			return 0, ErrSyntax
		}
		var err error
		if b[i] == '{' && sub != nil {
			i, err = checkObject(b, i, sub, depth+1)
		} else {
			i, ok = skipValue(b, i, depth)
			if !ok {
				err = ErrSyntax
			}
		}
		if err != nil {
			return 0, err
		}
		i = SkipWS(b, i)
		if i >= len(b) {
			return 0, ErrSyntax
		}
		switch b[i] {
		case ',':
			i = SkipWS(b, i+1)
		case '}':
			return i + 1, nil
		default:
			return 0, ErrSyntax
		}
	}
}

// SkipWS returns the index of the first byte at or after i that is not
// JSON white space.
func SkipWS(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// ReadKey reads the member name at b[i] and the colon after it. It returns
// the name as written (escapes not decoded), the index after the colon,
// whether the name holds an escape, and false for malformed JSON.
func ReadKey(b []byte, i int) (key []byte, next int, escaped, ok bool) {
	j, escaped, ok := skipString(b, i)
	if !ok {
		return nil, 0, false, false
	}
	key = b[i+1 : j-1]
	j = SkipWS(b, j)
	if j >= len(b) || b[j] != ':' {
		return nil, 0, false, false
	}
	return key, SkipWS(b, j+1), escaped, true
}

// SkipValue returns the index after the JSON value at b[i].
func SkipValue(b []byte, i int) (int, bool) { return skipValue(b, i, 0) }

func skipValue(b []byte, i, depth int) (int, bool) {
	if i >= len(b) {
		return 0, false
	}
	switch c := b[i]; {
	case c == '"':
		j, _, ok := skipString(b, i)
		return j, ok
	case c == '-' || (c >= '0' && c <= '9'):
		return skipNumber(b, i)
	case c == '{' || c == '[':
		return skipComposite(b, i, depth+1)
	}
	for _, lit := range [...]string{"true", "false", "null"} {
		if len(b)-i >= len(lit) && string(b[i:i+len(lit)]) == lit {
			return i + len(lit), true
		}
	}
	return 0, false
}

// skipComposite skips the object or array at b[i], its members unchecked.
func skipComposite(b []byte, i, depth int) (int, bool) {
	if depth > MaxDepth {
		return 0, false
	}
	obj := b[i] == '{'
	end := byte(']')
	if obj {
		end = '}'
	}
	i = SkipWS(b, i+1)
	if i < len(b) && b[i] == end {
		return i + 1, true
	}
	for {
		var ok bool
		if obj {
			if _, i, _, ok = ReadKey(b, i); !ok {
				return 0, false
			}
		}
		if i, ok = skipValue(b, i, depth); !ok {
			return 0, false
		}
		i = SkipWS(b, i)
		if i >= len(b) {
			return 0, false
		}
		switch b[i] {
		case ',':
			i = SkipWS(b, i+1)
		case end:
			return i + 1, true
		default:
			return 0, false
		}
	}
}

// skipString returns the index after the string at b[i] and whether it
// holds an escape. Raw control characters and unknown escapes are
// malformed; other bytes pass (encoding/json reads invalid UTF-8 as
// U+FFFD, it does not refuse it).
func skipString(b []byte, i int) (int, bool, bool) {
	if i >= len(b) || b[i] != '"' {
		return 0, false, false
	}
	escaped := false
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return j + 1, escaped, true
		case c < 0x20:
			return 0, false, false
		case c == '\\':
			escaped = true
			j++
			if j >= len(b) {
				return 0, false, false
			}
			switch b[j] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if len(b)-j <= 4 {
					return 0, false, false
				}
				for _, h := range b[j+1 : j+5] {
					if !isHex(h) {
						return 0, false, false
					}
				}
				j += 4
			default:
				return 0, false, false
			}
		}
	}
	return 0, false, false
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

// skipNumber skips -?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?
func skipNumber(b []byte, i int) (int, bool) {
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		i = digits(b, i)
	default:
		return 0, false
	}
	if i < len(b) && b[i] == '.' {
		j := digits(b, i+1)
		if j == i+1 {
			return 0, false
		}
		i = j
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := digits(b, i)
		if j == i {
			return 0, false
		}
		i = j
	}
	return i, true
}

func digits(b []byte, i int) int {
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		i++
	}
	return i
}
