package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/kdeliver/kdeliver/internal/testcert"
	"github.com/kdeliver/kdeliver/kdelivertest"
)

const (
	cliUser, cliPass = "carol", "carol-CLI-p4ssw0rd-51ab"
)

// env is a getenv of a fixed environment.
func env(vars ...string) func(string) string {
	return func(k string) string {
		for _, v := range vars {
			if name, value, _ := strings.Cut(v, "="); name == k {
				return value
			}
		}
		return ""
	}
}

// parseConn parses args as connection flags and resolves them.
func parseConn(t *testing.T, getenv func(string) string, args ...string) (conn, error) {
	t.Helper()
	fs := newFlagSet("test", "test", &strings.Builder{})
	var c connFlags
	c.register(fs)
	if err := fs.parse(args); err != nil {
		return conn{}, err
	}
	return c.resolve(getenv)
}

func TestConnFlags(t *testing.T) {
	certs := testcert.New(t)
	dir := t.TempDir()
	passFile := filepath.Join(dir, "password")
	if err := os.WriteFile(passFile, []byte(cliPass+"\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	emptyFile := filepath.Join(dir, "empty")
	if err := os.WriteFile(emptyFile, []byte("\nsecond line\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	withPass := env(envSASLPassword + "=" + cliPass)
	scramArgs := []string{"--sasl-mechanism", "scram-sha-512", "--sasl-user", cliUser}
	for _, c := range []struct {
		name   string
		getenv func(string) string
		args   []string
		usage  bool   // a usage error (exit 2)
		want   string // in the error; "" for none
		opts   int    // kdeliver options when it succeeds
	}{
		{"none", env(), nil, false, "", 0},
		{"tls", env(), []string{"--tls"}, false, "", 1},
		{"tls-ca implies tls", env(), []string{"--tls-ca", certs.CAFile}, false, "", 1},
		{"mtls", env(), []string{"--tls-ca", certs.CAFile, "--tls-cert", certs.CertFile, "--tls-key", certs.KeyFile}, false, "", 1},
		{"scram over tls, password from the environment", withPass, append([]string{"--tls"}, scramArgs...), false, "", 2},
		{"plain over tls, password from a file", env(), []string{"--tls", "--sasl-mechanism", "PLAIN", "--sasl-user", cliUser, "--sasl-password-file", passFile}, false, "", 2},
		{"plaintext sasl", withPass, append([]string{"--plaintext-sasl"}, scramArgs...), false, "", 2},

		{"no password flag", withPass, []string{"--sasl-password", cliPass}, true, "flag provided but not defined: -sasl-password", 0},
		{"unknown mechanism", withPass, []string{"--tls", "--sasl-mechanism", "GSSAPI", "--sasl-user", cliUser}, true, `--sasl-mechanism "GSSAPI": use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512`, 0},
		{"mechanism without user", withPass, []string{"--tls", "--sasl-mechanism", "PLAIN"}, true, "--sasl-mechanism needs --sasl-user NAME", 0},
		{"user without mechanism", withPass, []string{"--tls", "--sasl-user", cliUser}, true, "need --sasl-mechanism", 0},
		{"no password", env(), append([]string{"--tls"}, scramArgs...), true, "set $KDELIVER_SASL_PASSWORD, or pass --sasl-password-file FILE (there is no password flag", 0},
		{"two passwords", withPass, append([]string{"--tls", "--sasl-password-file", passFile}, scramArgs...), true, "give one", 0},
		{"sasl over plaintext", withPass, scramArgs, true, "--plaintext-sasl", 0},
		{"plaintext sasl with tls", withPass, append([]string{"--plaintext-sasl", "--tls"}, scramArgs...), true, "drop one", 0},
		{"plaintext sasl alone", env(), []string{"--plaintext-sasl"}, true, "needs --sasl-mechanism", 0},
		{"cert without key", env(), []string{"--tls-cert", certs.CertFile}, true, "--tls-cert and --tls-key go together", 0},
		{"missing password file", env(), append([]string{"--tls", "--sasl-password-file", filepath.Join(dir, "nope")}, scramArgs...), false, filepath.Join(dir, "nope"), 0},
		{"empty password line", env(), append([]string{"--tls", "--sasl-password-file", emptyFile}, scramArgs...), false, "starts with an empty line", 0},
		{"ca not pem", env(), []string{"--tls-ca", passFile}, false, "CA file " + fmt.Sprintf("%q", passFile) + " holds no PEM data", 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseConn(t, c.getenv, c.args...)
			if c.want == "" {
				if err != nil {
					t.Fatalf("%v", err)
				}
				if len(got.opts) != c.opts {
					t.Errorf("%d options, want %d", len(got.opts), c.opts)
				}
				return
			}
			var ue usageError
			switch {
			case err == nil:
				t.Fatalf("no error; want %q", c.want)
			case c.usage != errors.As(err, &ue):
				t.Errorf("error %q: usage error %v, want %v", err, !c.usage, c.usage)
			case !strings.Contains(err.Error(), c.want):
				t.Errorf("error %q does not say %q", err, c.want)
			}
			if strings.Contains(err.Error(), cliPass) || strings.Contains(err.Error(), "second line") {
				t.Errorf("error %q holds a password or a file's contents", err)
			}
		})
	}
}

// TestConnFlagsRoundTripTheEnvironment: what verify puts in a pipeline's
// environment is what verify copy reads back, the password file as an
// absolute path and never the password itself.
func TestConnFlagsRoundTripTheEnvironment(t *testing.T) {
	certs := testcert.New(t)
	dir := t.TempDir()
	t.Chdir(dir)
	if err := os.WriteFile("password", []byte(cliPass), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := parseConn(t, env(), "--tls-ca", certs.CAFile, "--sasl-mechanism", "SCRAM-SHA-256", "--sasl-user", cliUser, "--sasl-password-file", "password")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{envTLS + "=1", envTLSCA + "=" + certs.CAFile, envTLSCert + "=", envTLSKey + "=", envSASLMechanism + "=SCRAM-SHA-256",
		envSASLUser + "=" + cliUser, envSASLPasswordFile + "=" + filepath.Join(dir, "password"), envPlaintextSASL + "=", envSASLPassword + "="}
	if !slices.Equal(c.env, want) {
		t.Errorf("environment\n%q\nwant\n%q", c.env, want)
	}
	back := connFromEnv(env(c.env...))
	again, err := back.resolve(env(c.env...))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(again.env, c.env) || len(again.opts) != 2 {
		t.Errorf("read back: %q (%d options), want %q (2)", again.env, len(again.opts), c.env)
	}
	// A bad setting is named by its variable.
	bad := connFromEnv(env(envSASLMechanism + "=PLAIN"))
	_, err = bad.resolve(env())
	if err == nil || !strings.Contains(err.Error(), "$"+envSASLMechanism+" needs $"+envSASLUser) {
		t.Errorf("error %v; want it to name the environment variables", err)
	}
}

// TestConnFlagsHelp: -h of each command lists the connection flags and
// says there is no password flag.
func TestConnFlagsHelp(t *testing.T) {
	for _, args := range [][]string{{"demo", "-h"}, {"verify", "-h"}, {"txns", "list", "-h"}, {"txns", "abort", "-h"}} {
		code, _, errOut := runCmd(args...)
		if code != exitOK {
			t.Errorf("%v: exit %d", args, code)
		}
		for _, want := range []string{"-tls-ca FILE", "-sasl-mechanism MECHANISM", "-sasl-password-file FILE", "KDELIVER_SASL_PASSWORD", "There is no --sasl-password flag"} {
			if !strings.Contains(errOut, want) {
				t.Errorf("%v: help lacks %q:\n%s", args, want, errOut)
			}
		}
	}
	for _, args := range [][]string{{"demo", "--tls"}, {"verify", "--sasl-user", "x"}} {
		code, _, errOut := runCmd(args...)
		if code != exitUsage || !strings.Contains(errOut, "apply to a cluster given with --brokers") {
			t.Errorf("%v without --brokers: exit %d, stderr %q; want exit 2", args, code, errOut)
		}
	}
}

// TestCommandsOnSecuredCluster: demo, verify (with its copier, which gets
// the connection through the environment) and txns list and abort run on a
// cluster that takes only TLS connections authenticated with
// SCRAM-SHA-512.
func TestCommandsOnSecuredCluster(t *testing.T) {
	certs := testcert.New(t)
	dir := t.TempDir()
	passFile := filepath.Join(dir, "password")
	if err := os.WriteFile(passFile, []byte(cliPass+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	brokers, pid := hangingClusterWith(t,
		[]kfake.Opt{kfake.TLS(certs.Broker(false)), kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-512", cliUser, cliPass), kfake.SeedTopics(2, "in", "out"),
			kfake.GroupMinSessionTimeout(kdelivertest.MinSessionTimeout)},
		[]kgo.Opt{kgo.DialTLSConfig(certs.Client()), kgo.SASL(scram.Auth{User: cliUser, Pass: cliPass}.AsSha512Mechanism())})
	conn := []string{"--brokers", brokers, "--tls-ca", certs.CAFile, "--sasl-mechanism", "SCRAM-SHA-512", "--sasl-user", cliUser}

	// Without the connection flags the cluster refuses the client.
	if code, _, errOut := runCmd("txns", "list", "--brokers", brokers, "--timeout", "3s"); code != exitFail {
		t.Errorf("txns list without TLS and SASL: exit %d, stderr %q; want 1", code, errOut)
	}

	code, out, errOut := runCmd(append([]string{"demo"}, append(conn, "--sasl-password-file", passFile, "--records", "100", "--semantics", "at-least-once", "--crashes", "1")...)...)
	if code != exitOK || !strings.Contains(out, "at-least-once") {
		t.Fatalf("demo: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}

	// The built-in copier is this test binary (see verify_test.go).
	t.Setenv(envRunMain, "1")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	code, rep, errOut := verifyJSON(t, append(conn, "--sasl-password-file", passFile, "--input", "in", "--output", "out", "--records", "300",
		"--kills", "1", "--quiet", "20s", "--run", "exec "+shellQuote(exe)+" verify copy --mode eos --session-timeout 2s --txn-timeout 1s")...)
	if code != exitOK || !rep.Pass || rep.DeliveredOnce != 300 {
		t.Fatalf("verify: exit %d, report %+v\nstderr:\n%s", code, rep, errOut)
	}
	if strings.Contains(errOut, cliPass) {
		t.Errorf("verify's stderr holds the password:\n%s", errOut)
	}

	t.Setenv(envSASLPassword, cliPass)
	code, out, errOut = runCmd(append([]string{"txns", "list", "--hanging", "--older-than", "0s"}, conn...)...)
	if code != exitOK || !strings.Contains(out, "stuck-1") {
		t.Fatalf("txns list --hanging: exit %d\nstdout:\n%s\nstderr:\n%s", code, out, errOut)
	}
	code, out, errOut = runCmd(append([]string{"txns", "abort", "--topic", "hang", "--partition", "1", "--yes"}, conn...)...)
	if want := fmt.Sprintf("aborted the transaction of producer ID %d", pid); code != exitOK || !strings.Contains(out, want) {
		t.Fatalf("txns abort: exit %d\nstdout:\n%s\nstderr:\n%s\nwant %q", code, out, errOut, want)
	}
}
