package kdeliver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/oauth"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/kdeliver/kdeliver/internal/shared"
)

// WithTLS connects to every broker over TLS configured by cfg, overriding
// the default of plaintext connections. cfg is cloned when the option is
// applied, so changing it afterwards changes nothing. A cfg without
// ServerName checks each broker's certificate against the host of the
// address dialled; a nil RootCAs trusts the system's roots. Use
// [WithTLSFiles] for PEM files. The last of WithTLS and WithTLSFiles wins.
//
// Every client kdeliver builds for the configuration dials this way: the
// producer's, the consumer's (and its Ping's), the session's, and the
// hanging-transaction watcher's ([WithHangingTransactionWatch]). A guard
// (package dedup) takes the option too but connects to no broker.
func WithTLS(cfg *tls.Config) Option {
	return Option{func(t *shared.Target) {
		if cfg == nil {
			t.Reject("kdeliver.WithTLS(nil): pass a *tls.Config (&tls.Config{} trusts the system's roots), or use kdeliver.WithTLSFiles")
			return
		}
		t.Shared.Conn.TLS = cfg.Clone()
	}}
}

// WithTLSFiles connects to every broker over TLS, like [WithTLS], with
// PEM files read when the option is applied (by the constructor): caFile
// holds the certificates of the authorities that signed the brokers'
// certificates ("" trusts the system's roots); certFile and keyFile hold
// the client's certificate chain and private key, for brokers that
// authenticate clients by certificate (mTLS): pass both or neither. A file
// that cannot be read or holds no usable PEM block makes the constructor
// fail with an error naming the file and what is wrong with it, never its
// contents.
func WithTLSFiles(caFile, certFile, keyFile string) Option {
	return Option{func(t *shared.Target) {
		cfg, problems := tlsFromFiles(caFile, certFile, keyFile)
		for _, p := range problems {
			t.Reject("kdeliver.WithTLSFiles: " + p)
		}
		if len(problems) == 0 {
			t.Shared.Conn.TLS = cfg
		}
	}}
}

func tlsFromFiles(caFile, certFile, keyFile string) (*tls.Config, []string) {
	cfg := &tls.Config{}
	var problems []string
	if caFile != "" {
		pool, err := readCAs(caFile)
		if err != nil {
			problems = append(problems, err.Error())
		}
		cfg.RootCAs = pool
	}
	switch {
	case certFile == "" && keyFile == "":
	case certFile == "" || keyFile == "":
		problems = append(problems, fmt.Sprintf("a client certificate needs both files, got certificate %q and key %q: pass both, or neither for no client certificate", certFile, keyFile))
	default:
		cert, err := readKeyPair(certFile, keyFile)
		if err != nil {
			problems = append(problems, err.Error())
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, problems
}

// readCAs reads the CA certificates of file.
func readCAs(file string) (*x509.CertPool, error) {
	b, err := readPEM("CA file", file)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	var others []string
	certs := 0
	for n := 1; ; n++ {
		var block *pem.Block
		if block, b = pem.Decode(b); block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			others = append(others, block.Type)
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CA file %q: PEM block %d is not a valid certificate (%v)", file, n, err)
		}
		pool.AddCert(c)
		certs++
	}
	if len(others) > 0 {
		return nil, fmt.Errorf("CA file %q holds %s blocks besides certificates: pass a file of the CA's certificates only", file, strings.Join(others, ", "))
	}
	if certs == 0 {
		return nil, fmt.Errorf("CA file %q holds no PEM certificate (a \"-----BEGIN CERTIFICATE-----\" block)", file)
	}
	return pool, nil
}

// readKeyPair reads a client certificate and its key.
func readKeyPair(certFile, keyFile string) (tls.Certificate, error) {
	cb, cerr := readPEM("certificate file", certFile)
	kb, kerr := readPEM("key file", keyFile)
	if err := errors.Join(cerr, kerr); err != nil {
		return tls.Certificate{}, err
	}
	cert, err := tls.X509KeyPair(cb, kb)
	if err != nil {
		// crypto/tls names what it found, never the key's bytes.
		return tls.Certificate{}, fmt.Errorf("certificate file %q and key file %q: %v", certFile, keyFile, err)
	}
	return cert, nil
}

// readPEM reads file, which must hold PEM data.
func readPEM(what, file string) ([]byte, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("%s: %v", what, err) // names the file
	}
	if !strings.Contains(string(b), "-----BEGIN ") {
		return nil, fmt.Errorf("%s %q holds no PEM data (a \"-----BEGIN ...-----\" block): pass a PEM file, not DER or PKCS#12", what, file)
	}
	return b, nil
}

// SASL is how a client authenticates to the brokers: make one with
// [SASLPlain], [SASLScramSHA256], [SASLScramSHA512] or [SASLOAuthBearer],
// and pass it to [WithSASL]. Printed with any verb, logged or put in an
// error it shows its mechanism and user, never its password or token:
//
//	SASL(SCRAM-SHA-512, user "alice", password redacted)
type SASL struct {
	// A pointer, so that printing a struct that holds a SASL shows an
	// address rather than the fields behind it.
	m *mechanism
}

type mechanism struct {
	name    string // PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER
	user    string // "" for OAUTHBEARER
	problem string // why it cannot be used; "" if it can
	mech    sasl.Mechanism
}

// SASLPlain authenticates with SASL/PLAIN, which sends the password itself
// to the broker: use it over TLS only. An empty user or password is
// refused by [WithSASL].
func SASLPlain(user, password string) SASL {
	return userSASL("PLAIN", user, password, func() sasl.Mechanism {
		return plain.Auth{User: user, Pass: password}.AsMechanism()
	})
}

// SASLScramSHA256 authenticates with SASL/SCRAM-SHA-256, which proves the
// password without sending it. An empty user or password is refused by
// [WithSASL].
func SASLScramSHA256(user, password string) SASL {
	return userSASL("SCRAM-SHA-256", user, password, func() sasl.Mechanism {
		return scram.Auth{User: user, Pass: password}.AsSha256Mechanism()
	})
}

// SASLScramSHA512 authenticates with SASL/SCRAM-SHA-512, which proves the
// password without sending it. An empty user or password is refused by
// [WithSASL].
func SASLScramSHA512(user, password string) SASL {
	return userSASL("SCRAM-SHA-512", user, password, func() sasl.Mechanism {
		return scram.Auth{User: user, Pass: password}.AsSha512Mechanism()
	})
}

func userSASL(name, user, password string, mech func() sasl.Mechanism) SASL {
	m := &mechanism{name: name, user: user}
	switch {
	case user == "" && password == "":
		m.problem = "the user and the password are empty"
	case user == "":
		m.problem = "the user is empty"
	case password == "":
		m.problem = "the password is empty"
	default:
		m.mech = mech()
	}
	return SASL{m}
}

// SASLOAuthBearer authenticates with SASL/OAUTHBEARER, with a bearer token
// token returns. token is called for each new connection (and
// reauthentication), with the dialling context, so it may fetch or refresh
// the token; an error it returns fails that connection. A nil token is
// refused by [WithSASL].
func SASLOAuthBearer(token func(context.Context) (string, error)) SASL {
	m := &mechanism{name: "OAUTHBEARER"}
	if token == nil {
		m.problem = "the token function is nil"
	} else {
		m.mech = oauth.Oauth(func(ctx context.Context) (oauth.Auth, error) {
			tok, err := token(ctx)
			if err != nil {
				return oauth.Auth{}, fmt.Errorf("kdeliver: SASL/OAUTHBEARER token: %w", err)
			}
			if tok == "" {
				return oauth.Auth{}, errors.New("kdeliver: SASL/OAUTHBEARER token: the token function returned an empty token")
			}
			return oauth.Auth{Token: tok}, nil
		})
	}
	return SASL{m}
}

// String names the mechanism and the user, e.g. SASL(SCRAM-SHA-512, user
// "alice", password redacted).
func (s SASL) String() string {
	switch {
	case s.m == nil:
		return "SASL(none)"
	case s.m.name == "OAUTHBEARER":
		return "SASL(OAUTHBEARER, token from a function)"
	}
	return fmt.Sprintf("SASL(%s, user %q, password redacted)", s.m.name, s.m.user)
}

// GoString is String: %#v shows no secret either.
func (s SASL) GoString() string { return s.String() }

// Format writes String for every verb (%v, %+v, %#v, %s, %q, %x, ...).
func (s SASL) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, s.String()) }

// LogValue is String, for log/slog.
func (s SASL) LogValue() slog.Value { return slog.StringValue(s.String()) }

// MarshalText is String, for encoders (encoding/json, YAML) that would
// otherwise look inside.
func (s SASL) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// WithSASL authenticates every connection with m, overriding the default
// of no authentication; the last WithSASL wins. SASL needs TLS
// ([WithTLS], [WithTLSFiles]): without it the constructor refuses the
// configuration, since PLAIN would send the password in clear and any
// mechanism the session that follows, unless [WithPlaintextSASL] says
// the network is trusted. A broker that refuses the credentials fails the
// first call that connects (Ping, Produce, Run).
func WithSASL(m SASL) Option {
	return Option{func(t *shared.Target) {
		switch {
		case m.m == nil:
			t.Reject("kdeliver.WithSASL(kdeliver.SASL{}): make the SASL with kdeliver.SASLPlain, SASLScramSHA256, SASLScramSHA512 or SASLOAuthBearer")
		case m.m.problem != "":
			t.Reject(fmt.Sprintf("kdeliver.WithSASL(%v): %s", m, m.m.problem))
		default:
			t.Shared.Conn.SASL, t.Shared.Conn.SASLName = m.m.mech, m.String()
		}
	}}
}

// WithPlaintextSASL allows [WithSASL] without TLS, overriding the default
// of refusing it: for a network you trust (a broker's SASL_PLAINTEXT
// listener on a private network, a test cluster). Anyone who can read the
// traffic then reads a PLAIN password, and the records of any mechanism.
// It is refused with [WithTLS] or [WithTLSFiles], and without WithSASL.
func WithPlaintextSASL() Option {
	return Option{func(t *shared.Target) { t.Shared.Conn.PlaintextSASL = true }}
}
