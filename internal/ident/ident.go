// Package ident validates the names that travel through stockd's keys,
// rows and tokens: SKUs and request ids.
package ident

import "errors"

// Limits of identifiers.
const (
	MaxSKU       = 64
	MaxRequestID = 128
	MaxUserID    = 128
)

// ValidSKU checks a SKU name: 1 to 64 characters from A-Z a-z 0-9 . _ -
// (no braces or colons: SKUs are part of Redis hash tags, detail ids and
// reservation tokens).
func ValidSKU(s string) error {
	if s == "" {
		return errors.New("required")
	}
	if len(s) > MaxSKU {
		return errors.New("longer than 64 characters")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return errors.New("only A-Z a-z 0-9 . _ - allowed")
		}
	}
	return nil
}

// ValidRequestID checks a request id (or user id): 1 to max printable ASCII
// characters.
func ValidRequestID(s string, max int) error {
	if s == "" {
		return errors.New("required")
	}
	if len(s) > max {
		return errors.New("too long")
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x21 || s[i] > 0x7e {
			return errors.New("only printable ASCII without spaces allowed")
		}
	}
	return nil
}
