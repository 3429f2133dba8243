package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/kdeliver/kdeliver"
	"github.com/kdeliver/kdeliver/internal/preset"
)

// connHelp is what -h of demo, verify and txns says of the connection
// flags, after their list.
const connHelp = `Connecting to a secured cluster: --tls (or any --tls-* flag) dials the
brokers with TLS; --sasl-mechanism and --sasl-user authenticate with SASL,
with the password in $KDELIVER_SASL_PASSWORD or in --sasl-password-file.
There is no --sasl-password flag, on purpose: a flag's value shows in ps
and in the shell's history. SASL needs TLS unless --plaintext-sasl says the
network is trusted.`

// Environment of a pipeline verify starts (and of verify copy): how to
// connect, besides the brokers. Unset or empty is off.
const (
	envTLS              = "KDELIVER_TLS" // "1": TLS with the system's roots
	envTLSCA            = "KDELIVER_TLS_CA"
	envTLSCert          = "KDELIVER_TLS_CERT"
	envTLSKey           = "KDELIVER_TLS_KEY"
	envSASLMechanism    = "KDELIVER_SASL_MECHANISM"
	envSASLUser         = "KDELIVER_SASL_USER"
	envSASLPassword     = "KDELIVER_SASL_PASSWORD"
	envSASLPasswordFile = "KDELIVER_SASL_PASSWORD_FILE"
	envPlaintextSASL    = "KDELIVER_PLAINTEXT_SASL" // "1"
)

// connFlags are the connection flags of demo, verify and txns.
type connFlags struct {
	tls             bool
	ca, cert, key   string
	mechanism, user string
	passwordFile    string
	plaintextSASL   bool
	fromEnv         bool // read from a pipeline's environment, not flags
}

func (c *connFlags) register(fs *flagSet) {
	fs.footer = connHelp
	fs.BoolVar(&c.tls, "tls", false, "connect to the brokers with TLS, trusting the system's certificate authorities (the --tls-* flags imply it)")
	fs.StringVar(&c.ca, "tls-ca", "", "PEM `FILE` of the authorities that signed the brokers' certificates, instead of the system's")
	fs.StringVar(&c.cert, "tls-cert", "", "PEM `FILE` of a client certificate, for brokers that authenticate clients by certificate (with --tls-key)")
	fs.StringVar(&c.key, "tls-key", "", "PEM `FILE` of the client certificate's private key (with --tls-cert)")
	fs.StringVar(&c.mechanism, "sasl-mechanism", "", "authenticate with SASL `MECHANISM`: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with --sasl-user)")
	fs.StringVar(&c.user, "sasl-user", "", "SASL user `NAME`")
	fs.StringVar(&c.passwordFile, "sasl-password-file", "", "`FILE` whose first line is the SASL password, if $"+envSASLPassword+" does not hold it (there is no password flag)")
	fs.BoolVar(&c.plaintextSASL, "plaintext-sasl", false, "allow SASL without TLS, on a network you trust (a SASL_PLAINTEXT listener)")
}

// connFromEnv reads the connection of a pipeline from its environment.
func connFromEnv(getenv func(string) string) connFlags {
	return connFlags{
		tls: getenv(envTLS) == "1", ca: getenv(envTLSCA), cert: getenv(envTLSCert), key: getenv(envTLSKey),
		mechanism: getenv(envSASLMechanism), user: getenv(envSASLUser), passwordFile: getenv(envSASLPasswordFile),
		plaintextSASL: getenv(envPlaintextSASL) == "1", fromEnv: true,
	}
}

// set reports whether any connection flag was given.
func (c *connFlags) set() bool {
	return c.tls || c.ca != "" || c.cert != "" || c.key != "" || c.mechanism != "" || c.user != "" || c.passwordFile != "" || c.plaintextSASL
}

// name is how an error names a setting: the flag, or in verify copy the
// environment variable.
func (c *connFlags) name(flag, env string) string {
	if c.fromEnv {
		return "$" + env
	}
	return "--" + flag
}

// conn is how a command's clients connect.
type conn struct {
	opts []kdeliver.Option // for kdeliver's clients
	kgo  []kgo.Opt         // for the clients a command builds with kgo
	env  []string          // for a pipeline verify starts
}

// resolve checks the flags and turns them into the connection, reading the
// password from $KDELIVER_SASL_PASSWORD (getenv) or the password file and
// the TLS files. Flags that do not fit together are a usage error.
func (c *connFlags) resolve(getenv func(string) string) (conn, error) {
	var out conn
	mech := strings.ToUpper(c.mechanism)
	sasl := map[string]func(user, password string) kdeliver.SASL{
		"PLAIN": kdeliver.SASLPlain, "SCRAM-SHA-256": kdeliver.SASLScramSHA256, "SCRAM-SHA-512": kdeliver.SASLScramSHA512,
	}[mech]
	useTLS := c.tls || c.ca != "" || c.cert != "" || c.key != ""
	password, fromEnv := getenv(envSASLPassword), getenv(envSASLPassword) != ""
	mechFlag, userFlag, fileFlag := c.name("sasl-mechanism", envSASLMechanism), c.name("sasl-user", envSASLUser), c.name("sasl-password-file", envSASLPasswordFile)
	switch {
	case c.mechanism != "" && sasl == nil:
		return out, usagef("%s %q: use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", mechFlag, c.mechanism)
	case c.mechanism != "" && c.user == "":
		return out, usagef("%s needs %s NAME", mechFlag, userFlag)
	case c.mechanism == "" && (c.user != "" || c.passwordFile != ""):
		return out, usagef("%s and %s need %s PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", userFlag, fileFlag, mechFlag)
	case c.mechanism != "" && fromEnv && c.passwordFile != "":
		return out, usagef("the SASL password is both in $%s and in %s %s: give one", envSASLPassword, fileFlag, c.passwordFile)
	case c.mechanism != "" && !fromEnv && c.passwordFile == "":
		return out, usagef("%s needs a password: set $%s, or pass %s FILE (there is no password flag: a flag's value shows in ps and in the shell's history)", mechFlag, envSASLPassword, fileFlag)
	case c.plaintextSASL && c.mechanism == "":
		return out, usagef("%s allows SASL without TLS: it needs %s", c.name("plaintext-sasl", envPlaintextSASL), mechFlag)
	case c.plaintextSASL && useTLS:
		return out, usagef("%s allows SASL without TLS, but TLS is on (%s or a %s flag): drop one", c.name("plaintext-sasl", envPlaintextSASL), c.name("tls", envTLS), c.name("tls-*", "KDELIVER_TLS_*"))
	case c.mechanism != "" && !useTLS && !c.plaintextSASL:
		return out, usagef("SASL over a plaintext connection sends the credentials (PLAIN) or the session in clear: add --tls (or --tls-ca FILE), or, on a network you trust, --plaintext-sasl")
	case (c.cert == "") != (c.key == ""):
		return out, usagef("%s and %s go together: pass both, or neither for no client certificate", c.name("tls-cert", envTLSCert), c.name("tls-key", envTLSKey))
	}
	if c.passwordFile != "" {
		b, err := os.ReadFile(c.passwordFile)
		if err != nil {
			return out, fmt.Errorf("reading the SASL password: %v", err) // names the file, not its contents
		}
		password, _, _ = strings.Cut(string(b), "\n")
		if password = strings.TrimSuffix(password, "\r"); password == "" {
			return out, fmt.Errorf("the SASL password file %s starts with an empty line: put the password on its first line", c.passwordFile)
		}
	}

	if useTLS {
		out.opts = append(out.opts, kdeliver.WithTLSFiles(c.ca, c.cert, c.key))
	}
	if sasl != nil {
		out.opts = append(out.opts, kdeliver.WithSASL(sasl(c.user, password)))
	}
	if c.plaintextSASL {
		out.opts = append(out.opts, kdeliver.WithPlaintextSASL())
	}
	k, err := preset.Connection(out.opts...)
	if err != nil {
		return out, fmt.Errorf("connecting: %w", err)
	}
	out.kgo = k

	// A pipeline gets every setting, empty when off, so that what the
	// environment held before does not mix in.
	abs := func(p string) string {
		if a, err := filepath.Abs(p); err == nil && p != "" {
			return a
		}
		return p
	}
	flag := func(b bool) string {
		if b {
			return "1"
		}
		return ""
	}
	out.env = []string{
		envTLS + "=" + flag(useTLS), envTLSCA + "=" + abs(c.ca), envTLSCert + "=" + abs(c.cert), envTLSKey + "=" + abs(c.key),
		envSASLMechanism + "=" + mech, envSASLUser + "=" + c.user, envSASLPasswordFile + "=" + abs(c.passwordFile),
		envPlaintextSASL + "=" + flag(c.plaintextSASL),
	}
	if c.passwordFile != "" {
		out.env = append(out.env, envSASLPassword+"=") // the file has it
	}
	return out, nil
}

// noConnOnEmbedded refuses connection flags without --brokers: the
// embedded cluster is plaintext.
func (c *connFlags) noConnOnEmbedded(cmd string) error {
	if c.set() {
		return usagef("%s: the connection flags (--tls, --tls-*, --sasl-*, --plaintext-sasl) apply to a cluster given with --brokers; the embedded cluster takes plaintext connections", cmd)
	}
	return nil
}
