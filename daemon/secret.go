package daemon

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/stockd/stockd/internal/reservation"
)

// reservationSigner returns the signer of reservation tokens: the
// configured secret signs, the previous ones still verify. In demo mode
// without a secret, one is generated: kept in demo_secret_file (shared by
// the demo nodes that run from one directory, and by a restarted node), or
// new for this run when that is empty. It is never derived from anything
// the demo publishes.
func reservationSigner(cfg Config, log *slog.Logger) (*reservation.Signer, error) {
	secret := cfg.ReservationSecret
	if secret == "" {
		if !cfg.Demo {
			return nil, errors.New("reservation_secret: required") // Validate said so already
		}
		var err error
		if secret, err = demoSecret(cfg.DemoSecretFile); err != nil {
			return nil, fmt.Errorf("demo_secret_file: %w", err)
		}
		where := cfg.DemoSecretFile
		if where == "" {
			where = "this run only"
		}
		log.Warn("demo mode: reservation tokens signed with a generated secret; set reservation_secret in production", "secret", where)
	}
	prev := make([][]byte, len(cfg.ReservationSecretPrevious))
	for i, p := range cfg.ReservationSecretPrevious {
		prev[i] = []byte(p)
	}
	return reservation.NewSigner([]byte(secret), prev...), nil
}

// demoSecret reads the secret kept at path, creating it (32 random bytes,
// hex) if it does not exist; several nodes starting at once agree on one:
// the file appears whole (written aside, then linked into place), and the
// first link wins. An empty path gives a secret for this run only.
func demoSecret(path string) (string, error) {
	fresh := func() (string, error) {
		b := make([]byte, MinSecret)
		if _, err := rand.Read(b); err != nil {
			return "", err
		}
		return hex.EncodeToString(b), nil
	}
	if path == "" {
		return fresh()
	}
	if s, err := readSecret(path); !errors.Is(err, fs.ErrNotExist) {
		return s, err
	}
	s, err := fresh()
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".demo-secret-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(s + "\n"); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Link(tmp.Name(), path); err != nil && !errors.Is(err, fs.ErrExist) {
		return "", err
	}
	return readSecret(path)
}

func readSecret(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(string(b))
	if len(s) < MinSecret {
		return "", fmt.Errorf("%s: secret must be at least %d bytes (got %d)", path, MinSecret, len(s))
	}
	return s, nil
}
