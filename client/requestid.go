package client

import (
	"crypto/rand"
	"encoding/hex"
	"time"
)

// NewRequestID returns a random, time-ordered request id: a UUIDv7 (RFC 9562)
// in its canonical 36-character form, from the Unix time in milliseconds and
// 74 bits of crypto/rand. Ids made in the same millisecond are not ordered
// among themselves; nothing in stockd depends on that.
func NewRequestID() string {
	var u [16]byte
	rand.Read(u[6:]) // never fails (crypto/rand since Go 1.24)
	ms := uint64(time.Now().UnixMilli())
	for i := range 6 {
		u[i] = byte(ms >> (40 - 8*i))
	}
	u[6] = u[6]&0x0f | 0x70 // version 7
	u[8] = u[8]&0x3f | 0x80 // variant 10
	var s [36]byte
	hex.Encode(s[0:8], u[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], u[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], u[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], u[8:10])
	s[23] = '-'
	hex.Encode(s[24:], u[10:])
	return string(s[:])
}
