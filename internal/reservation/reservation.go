// Package reservation encodes the reservation a deduction returns to its
// caller: the detail id it was recorded under and its quantity, signed so
// that confirm and release can trust them before the detail has reached
// MySQL.
//
// Format: <sku>:<pid>:<epoch>:<seq>:<qty>:<sig>, where the first four
// fields are the detail id and sig is the first 12 bytes of
// HMAC-SHA256(key, "<detail id>:<qty>") in unpadded base64url.
//
// A valid signature says only that a node signed the token (or that
// someone holds the key): confirm and release still check that the
// deduction exists. Keys rotate: tokens are signed with the current key and
// verified with it and with the previous ones.
package reservation

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"hash"
	"strconv"
	"strings"
	"sync"
)

// ErrInvalid is returned for a token that does not parse or whose
// signature does not match.
var ErrInvalid = errors.New("invalid reservation")

const sigBytes = 12

// Signer signs tokens with its current key and verifies them with the
// current and the previous keys. It is safe for concurrent use and
// allocates nothing to sign.
type Signer struct {
	keys []*key // keys[0] signs
}

// key is one HMAC key with its pool of MACs.
type key struct {
	macs sync.Pool
}

func newKey(k []byte) *key {
	k = append([]byte(nil), k...)
	out := &key{}
	out.macs.New = func() any { return &mac{h: hmac.New(sha256.New, k)} }
	return out
}

// NewSigner returns a signer that signs with current and also accepts
// tokens signed with any of previous (a key rotation in progress).
func NewSigner(current []byte, previous ...[]byte) *Signer {
	s := &Signer{keys: []*key{newKey(current)}}
	for _, p := range previous {
		s.keys = append(s.keys, newKey(p))
	}
	return s
}

// Encode returns the token for a deduction.
func (s *Signer) Encode(detailID string, qty int64) string {
	return string(s.AppendToken(nil, detailID, qty))
}

// AppendToken appends the token for a deduction to dst.
func (s *Signer) AppendToken(dst []byte, detailID string, qty int64) []byte {
	start := len(dst)
	dst = append(dst, detailID...)
	dst = append(dst, ':')
	dst = strconv.AppendInt(dst, qty, 10)
	return s.keys[0].appendSig(dst, dst[start:])
}

// AppendDetailToken appends the token of the deduction (sku, pid, epoch,
// seq, qty) to dst, formatting the detail id in place.
func (s *Signer) AppendDetailToken(dst []byte, sku string, pid int, epoch, seq, qty int64) []byte {
	start := len(dst)
	dst = append(dst, sku...)
	dst = append(dst, ':')
	dst = strconv.AppendInt(dst, int64(pid), 10)
	dst = append(dst, ':')
	dst = strconv.AppendInt(dst, epoch, 10)
	dst = append(dst, ':')
	dst = strconv.AppendInt(dst, seq, 10)
	dst = append(dst, ':')
	dst = strconv.AppendInt(dst, qty, 10)
	return s.keys[0].appendSig(dst, dst[start:])
}

// appendSig appends ":" and the signature of body (which dst ends with).
func (k *key) appendSig(dst, body []byte) []byte {
	m := k.macs.Get().(*mac)
	m.h.Reset()
	m.h.Write(body)
	sum := m.h.Sum(m.sum[:0])
	dst = append(dst, ':')
	n := len(dst)
	dst = append(dst, make([]byte, base64.RawURLEncoding.EncodedLen(sigBytes))...)
	base64.RawURLEncoding.Encode(dst[n:], sum[:sigBytes])
	k.macs.Put(m)
	return dst
}

// mac is a pooled HMAC with room for its sum (so signing allocates nothing).
type mac struct {
	h   hash.Hash
	sum [sha256.Size]byte
}

// Decode verifies a token with the current and the previous keys and
// returns its detail id and quantity.
func (s *Signer) Decode(token string) (detailID string, qty int64, err error) {
	i := strings.LastIndexByte(token, ':')
	if i < 0 || len(token) > 512 {
		return "", 0, ErrInvalid
	}
	body := token[:i]
	ok := false
	for _, k := range s.keys {
		if hmac.Equal([]byte(token[i:]), k.appendSig(nil, []byte(body))) {
			ok = true
			break
		}
	}
	if !ok {
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
