// Package reservation encodes the reservation a deduction returns to its
// caller: the detail id it was recorded under and its quantity, signed so
// that confirm and release can trust them before the detail has reached
// MySQL.
//
// Format: <sku>:<pid>:<epoch>:<seq>:<qty>:<sig>, where the first four
// fields are the detail id and sig is the first 12 bytes of
// HMAC-SHA256(key, "<detail id>:<qty>") in unpadded base64url.
package reservation

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"strconv"
	"strings"
)

// ErrInvalid is returned for a token that does not parse or whose
// signature does not match.
var ErrInvalid = errors.New("invalid reservation")

const sigBytes = 12

// Signer signs and verifies tokens with one key.
type Signer struct {
	key []byte
}

// NewSigner returns a signer for key.
func NewSigner(key []byte) *Signer { return &Signer{key: append([]byte(nil), key...)} }

// Encode returns the token for a deduction.
func (s *Signer) Encode(detailID string, qty int64) string {
	body := detailID + ":" + strconv.FormatInt(qty, 10)
	return body + ":" + s.sign(body)
}

// Decode verifies a token and returns its detail id and quantity.
func (s *Signer) Decode(token string) (detailID string, qty int64, err error) {
	i := strings.LastIndexByte(token, ':')
	if i < 0 || len(token) > 512 {
		return "", 0, ErrInvalid
	}
	body, sig := token[:i], token[i+1:]
	if !hmac.Equal([]byte(sig), []byte(s.sign(body))) {
		return "", 0, ErrInvalid
	}
	j := strings.LastIndexByte(body, ':')
	if j < 0 {
		return "", 0, ErrInvalid
	}
	qty, err = strconv.ParseInt(body[j+1:], 10, 64)
	if err != nil || qty < 1 {
		return "", 0, ErrInvalid
	}
	return body[:j], qty, nil
}

func (s *Signer) sign(body string) string {
	m := hmac.New(sha256.New, s.key)
	m.Write([]byte(body))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil)[:sigBytes])
}
