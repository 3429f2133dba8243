// Package testcert makes the certificates of TLS tests: a certificate
// authority, a broker certificate for 127.0.0.1 it signed, and a client
// certificate, in memory and as PEM files. Only tests import it.
package testcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Set is a CA and the certificates it signed. The files are in a
// temporary directory of the test.
type Set struct {
	// CAFile holds the CA's certificate; CertFile and KeyFile the client's
	// certificate and key.
	CAFile, CertFile, KeyFile string

	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	pool   *x509.CertPool
	broker tls.Certificate
}

// New makes a CA, a broker certificate for 127.0.0.1 and a client
// certificate, and writes their files.
func New(t testing.TB) *Set {
	t.Helper()
	s := &Set{}
	s.caKey = key(t)
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "kdeliver test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &s.caKey.PublicKey, s.caKey)
	if err != nil {
		t.Fatal(err)
	}
	if s.ca, err = x509.ParseCertificate(der); err != nil {
		t.Fatal(err)
	}
	s.pool = x509.NewCertPool()
	s.pool.AddCert(s.ca)
	dir := t.TempDir()
	s.CAFile = write(t, dir, "ca.pem", pemOf("CERTIFICATE", der))

	bder, bkey := s.sign(t, 2, "127.0.0.1", x509.ExtKeyUsageServerAuth)
	s.broker = tls.Certificate{Certificate: [][]byte{bder}, PrivateKey: bkey}

	cder, ckey := s.sign(t, 3, "kdeliver test client", x509.ExtKeyUsageClientAuth)
	s.CertFile = write(t, dir, "client.pem", pemOf("CERTIFICATE", cder))
	kder, err := x509.MarshalPKCS8PrivateKey(ckey)
	if err != nil {
		t.Fatal(err)
	}
	s.KeyFile = write(t, dir, "client-key.pem", pemOf("PRIVATE KEY", kder))
	return s
}

// Broker returns the TLS configuration of a broker listening on
// 127.0.0.1, for kfake.TLS; with clientCerts it requires a client
// certificate the CA signed.
func (s *Set) Broker(clientCerts bool) *tls.Config {
	cfg := &tls.Config{Certificates: []tls.Certificate{s.broker}, MinVersion: tls.VersionTLS12}
	if clientCerts {
		cfg.ClientAuth, cfg.ClientCAs = tls.RequireAndVerifyClientCert, s.pool
	}
	return cfg
}

// Client returns a client configuration that trusts the CA.
func (s *Set) Client() *tls.Config { return &tls.Config{RootCAs: s.pool} }

func (s *Set) sign(t testing.TB, serial int64, name string, usage x509.ExtKeyUsage) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	k := key(t)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
	}
	if ip := net.ParseIP(name); ip != nil {
		tmpl.IPAddresses = []net.IP{ip}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, s.ca, &k.PublicKey, s.caKey)
	if err != nil {
		t.Fatal(err)
	}
	return der, k
}

func key(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func pemOf(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// write writes b to dir/name and returns the path.
func write(t testing.TB, dir, name string, b []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}
