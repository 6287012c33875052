package hot

import (
	"errors"
	"time"
)

// Options are the endpoint's settings, from the daemon's configuration
// (max_qty, request_timeout, http, limits and sync.max_extension).
type Options struct {
	// MaxQty is the largest qty one deduction may ask for.
	MaxQty int64
	// Timeout bounds one deduction (waits for refills included), and one
	// confirm, release or extend.
	Timeout time.Duration
	// MaxExtension caps what POST /v1/extend grants.
	MaxExtension time.Duration
	HTTP         HTTPConfig
	Limits       Limits
}

// HTTPConfig tunes the hot endpoint's server (fasthttp).
type HTTPConfig struct {
	// ReadTimeout bounds reading one request, headers and body.
	ReadTimeout time.Duration `yaml:"read_timeout"`
	// WriteTimeout bounds writing one answer.
	WriteTimeout time.Duration `yaml:"write_timeout"`
	// IdleTimeout closes keep-alive connections idle this long.
	IdleTimeout time.Duration `yaml:"idle_timeout"`
	// Concurrency caps the connections served at once; more are refused.
	Concurrency int `yaml:"concurrency"`
	// MaxConnsPerIP caps one client address's connections (0: no cap).
	MaxConnsPerIP int `yaml:"max_conns_per_ip"`
}

// Validate reports every bad field.
func (h HTTPConfig) Validate() error {
	var errs []error
	if h.ReadTimeout <= 0 {
		errs = append(errs, errors.New("read_timeout: must be positive"))
	}
	if h.WriteTimeout <= 0 {
		errs = append(errs, errors.New("write_timeout: must be positive"))
	}
	if h.IdleTimeout <= 0 {
		errs = append(errs, errors.New("idle_timeout: must be positive"))
	}
	if h.Concurrency < 1 {
		errs = append(errs, errors.New("concurrency: must be at least 1"))
	}
	if h.MaxConnsPerIP < 0 {
		errs = append(errs, errors.New("max_conns_per_ip: must not be negative"))
	}
	return errors.Join(errs...)
}
