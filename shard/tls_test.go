package shard

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stockd/stockd/internal/stocktest"
)

// writeCA makes a CA in dir and returns its certificate path, the parsed
// certificate and its key.
func writeCA(t *testing.T, dir, name string) (string, *x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	path := filepath.Join(dir, name+".pem")
	writePEM(t, path, "CERTIFICATE", der)
	return path, cert, key
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// A shard with tls, ca_file, username and password: Redis over TLS with an
// ACL user. The right CA and credentials connect and take; another CA or a
// wrong password is refused at connect, naming the shard.
func TestShardTLSAndACL(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	caPath, ca, caKey := writeCA(t, dir, "ca")
	otherCA, _, _ := writeCA(t, dir, "other")
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "redis"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath := filepath.Join(dir, "redis.pem"), filepath.Join(dir, "redis.key")
	writePEM(t, certPath, "CERTIFICATE", der)
	kder, _ := x509.MarshalECPrivateKey(key)
	writePEM(t, keyPath, "EC PRIVATE KEY", kder)

	tlsPort := stocktest.FreePort(t)
	stocktest.StartRedis(t, "--tls-port", strconv.Itoa(tlsPort), "--tls-cert-file", certPath, "--tls-key-file", keyPath,
		"--tls-ca-cert-file", caPath, "--tls-auth-clients", "no",
		"--user", "stockd", "on", ">s3cret", "~*", "&*", "+@all")
	cfg := Config{ID: "secure", Addr: "127.0.0.1:" + strconv.Itoa(tlsPort), Settings: Settings{TLS: true, CAFile: caPath, Username: "stockd", Password: "s3cret"}}
	opt := Options{Prefix: stocktest.Name("tls"), CheckDurability: true}

	set, err := Open(ctx, []Config{cfg}, opt, slog.Default())
	if err != nil {
		t.Fatalf("TLS with the right CA and credentials: %v", err)
	}
	defer set.Close()
	p, err := set.Partition("sku", 0, 9, "secure")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Init(ctx, 1, true); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Refill(ctx, 1, 'a', 5, 1); err != nil {
		t.Fatal(err)
	}
	if r, err := p.Take(ctx, "x", 1, 1, true, ""); err != nil || r.Code != Took {
		t.Fatalf("take over TLS: %+v %v", r, err)
	}

	wrongCA := cfg
	wrongCA.CAFile = otherCA
	if s, err := Open(ctx, []Config{wrongCA}, opt, slog.Default()); err == nil {
		s.Close()
		t.Fatal("a server certificate from another CA was accepted")
	}
	wrongPass := cfg
	wrongPass.Password = "nope"
	if s, err := Open(ctx, []Config{wrongPass}, opt, slog.Default()); err == nil {
		s.Close()
		t.Fatal("a wrong password was accepted")
	}
	// Not even as a shard that is down: it answers, and says no.
	opt.StartUnreachable = true
	if s, err := Open(ctx, []Config{wrongPass}, opt, slog.Default()); err == nil {
		s.Close()
		t.Fatal("a wrong password was taken for a shard that does not answer")
	}
}
