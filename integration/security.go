package integration

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha512"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// SecureListener is the name (and security protocol) of the listener that
// [WithSecurity] adds to every node.
const SecureListener = "SASL_SSL"

// AdminUser is the SCRAM user of [Security.Admin], a super user.
const AdminUser = "admin"

// scramIterations is the iteration count of every SCRAM credential the
// harness makes: Kafka's minimum, the cheapest for tests.
const scramIterations = 4096

// WithSecurity gives every node a second client listener, SASL_SSL, next to
// the PLAINTEXT one: TLS with a certificate for 127.0.0.1 and localhost
// signed by a CA the harness makes for the cluster, and SASL
// SCRAM-SHA-512 (SCRAM-SHA-256 is enabled too) over it, with Kafka's
// StandardAuthorizer deciding what each principal may do, so that no ACL
// means no access. [Cluster.Security] returns the listener's addresses,
// the CA, a super user's admin client and helpers that create SCRAM users
// and grant and revoke ACLs.
//
// The PLAINTEXT listener, the KRaft controller listener and replication
// stay PLAINTEXT on 127.0.0.1 (with containers: the CLIENT listener on a
// 127.0.0.1 port of the host, the others on the cluster's network). Their
// principal is User:ANONYMOUS, which is a super user next to User:admin:
// StandardAuthorizer authorizes the brokers' own requests (registration
// with the controller, replica fetches) like any other, and over PLAINTEXT
// the brokers are ANONYMOUS. So [Cluster.Brokers], [Cluster.Admin] and
// [Cluster.Client] keep working with no credentials (creating topics,
// seeding, reading back), and only what connects to
// [Security.Brokers] is authenticated and authorized. Test what
// credentials and ACLs do on the SASL_SSL listener only.
//
// The admin user's SCRAM-SHA-512 credential is in the cluster metadata
// from the start: the process backend formats the log directories with
// it (kafka-storage format --add-scram, KIP-900); the container backend,
// whose image formats the directories itself, creates it through the
// PLAINTEXT listener once the nodes serve.
//
// kfake and external clusters cannot have it: [New] returns an error
// wrapping [ErrUnsupported].
func WithSecurity() Option { return func(c *config) { c.security = true } }

// securityConfig is what the nodes of a secure cluster share: the broker's
// key and certificate and the admin's password.
type securityConfig struct {
	caPEM     []byte
	ca        *x509.Certificate
	certPEM   []byte // the broker certificate, then the CA
	keyPEM    []byte // PKCS#8
	adminPass string
}

func newSecurityConfig() (*securityConfig, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "kdeliver integration CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(7 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	pk, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	return &securityConfig{
		caPEM:     caPEM,
		ca:        ca,
		certPEM:   append(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), caPEM...),
		keyPEM:    pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pk}),
		adminPass: randomSecret(),
	}, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62)) // never fails (crypto/rand)
	return n
}

// randomSecret returns 32 random hex digits: a password that needs no
// quoting anywhere (properties, JAAS, the storage tool's --add-scram).
func randomSecret() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// propValue escapes a multi-line value for a .properties file: Java's
// Properties turns \n back into a line break. The container image writes
// KAFKA_* variables into server.properties as they are, so the same
// escaped value works there.
func propValue(s string) string {
	return strings.ReplaceAll(strings.TrimRight(s, "\n"), "\n", `\n`)
}

// brokerProps returns the properties that the secure listener needs on
// every node, next to the listeners themselves (see [loopbackListeners]
// and [containerListeners]).
func (s *securityConfig) brokerProps() map[string]string {
	const l = "listener.name.sasl_ssl."
	const jaas = "org.apache.kafka.common.security.scram.ScramLoginModule required;"
	return map[string]string{
		"authorizer.class.name":                     "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
		"super.users":                               "User:" + AdminUser + ";User:ANONYMOUS",
		"allow.everyone.if.no.acl.found":            "false",
		l + "sasl.enabled.mechanisms":               "SCRAM-SHA-512,SCRAM-SHA-256",
		l + "scram-sha-512.sasl.jaas.config":        jaas,
		l + "scram-sha-256.sasl.jaas.config":        jaas,
		l + "ssl.keystore.type":                     "PEM",
		l + "ssl.keystore.certificate.chain":        propValue(string(s.certPEM)),
		l + "ssl.keystore.key":                      propValue(string(s.keyPEM)),
		l + "ssl.client.auth":                       "none",
		l + "ssl.endpoint.identification.algorithm": "",
	}
}

// addScram is the storage tool's argument that puts the admin's
// credential in the bootstrap metadata.
func (s *securityConfig) addScram() string {
	return fmt.Sprintf("SCRAM-SHA-512=[name=%s,iterations=%d,password=%s]", AdminUser, scramIterations, s.adminPass)
}

// secureBackend is a backend that can run the secure listener.
type secureBackend interface {
	// secureAddrs returns the SASL_SSL address of every node, node 1 first.
	secureAddrs() []string
	// formatsScram reports whether the admin's credential was put in the
	// metadata when the nodes were formatted.
	formatsScram() bool
}

// Security is the SASL_SSL side of a cluster started with [WithSecurity].
// Its methods are safe for concurrent use.
type Security struct {
	c       *Cluster
	sec     *securityConfig
	brokers []string
	caFile  string
	cl      *kgo.Client
	adm     *kadm.Client
}

// Security returns the cluster's SASL_SSL side, or nil if it was started
// without [WithSecurity].
func (c *Cluster) Security() *Security { return c.sec }

// setUpSecurity makes the admin's credential (unless formatting did),
// waits until the admin authenticates on every node's SASL_SSL listener
// and builds its client.
func (c *Cluster) setUpSecurity(ctx context.Context) error {
	sb := c.be.(secureBackend)
	s := &Security{c: c, sec: c.cfg.sec, brokers: sb.secureAddrs()}
	f, err := os.CreateTemp("", "kdeliver-kafka-ca-*.pem")
	if err != nil {
		return fmt.Errorf("integration: %w", err)
	}
	s.caFile = f.Name()
	c.sec = s // closed (the file removed) by Close from here on
	_, err = f.Write(s.sec.caPEM)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("integration: %w", err)
	}
	if !sb.formatsScram() {
		err := poll(ctx, 250*time.Millisecond, "create the admin's SCRAM credential", func(ctx context.Context) (bool, string, error) {
			r, err := c.adm.AlterUserSCRAMs(ctx, nil, []kadm.UpsertSCRAM{{
				User: AdminUser, Mechanism: kadm.ScramSha512, Iterations: scramIterations, Password: s.sec.adminPass,
			}})
			if err == nil {
				err = r.Error()
			}
			if err != nil {
				if isRetriable(err) {
					return false, err.Error(), nil
				}
				return false, "", fmt.Errorf("integration: create the admin's SCRAM credential: %w", err)
			}
			return true, "", nil
		})
		if err != nil {
			return err
		}
	}
	for _, addr := range s.brokers {
		if err := s.waitAuth(ctx, addr, AdminUser, s.sec.adminPass); err != nil {
			return err
		}
	}
	s.cl, err = kgo.NewClient(append(s.KgoOpts(AdminUser, s.sec.adminPass), kgo.SeedBrokers(s.brokers...), kgo.DialTimeout(3*time.Second), kgo.MetadataMinAge(100*time.Millisecond))...)
	if err != nil {
		return fmt.Errorf("integration: secure admin client: %w", err)
	}
	s.adm = kadm.NewClient(s.cl)
	return nil
}

func (s *Security) close() {
	if s == nil {
		return
	}
	if s.cl != nil {
		s.cl.Close()
	}
	os.Remove(s.caFile)
}

// waitAuth waits until user authenticates on the broker at addr: a new
// credential reaches each broker through the metadata log, shortly after
// the controller accepted it.
func (s *Security) waitAuth(ctx context.Context, addr, user, password string) error {
	return poll(ctx, 100*time.Millisecond, fmt.Sprintf("authenticate as %s on %s", user, addr), func(ctx context.Context) (bool, string, error) {
		cl, err := kgo.NewClient(append(s.KgoOpts(user, password), kgo.SeedBrokers(addr), kgo.DialTimeout(2*time.Second), kgo.RequestRetries(0))...)
		if err != nil {
			return false, "", err
		}
		defer cl.Close()
		req := kmsg.NewPtrApiVersionsRequest()
		if _, err := req.RequestWith(ctx, cl); err != nil {
			return false, err.Error(), nil
		}
		return true, "", nil
	})
}

// Brokers returns the SASL_SSL address of every node (127.0.0.1:port),
// node 1 first.
func (s *Security) Brokers() []string { return slices.Clone(s.brokers) }

// CAPEM returns the PEM of the CA that signed the brokers' certificate.
func (s *Security) CAPEM() []byte { return slices.Clone(s.sec.caPEM) }

// CAFile returns the path of a file holding [Security.CAPEM], removed by
// [Cluster.Close].
func (s *Security) CAFile() string { return s.caFile }

// CertPool returns a pool holding only the cluster's CA.
func (s *Security) CertPool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(s.sec.ca)
	return p
}

// TLSConfig returns a new TLS client configuration that trusts the
// cluster's CA only. The brokers' certificate names 127.0.0.1, ::1 and
// localhost.
func (s *Security) TLSConfig() *tls.Config {
	return &tls.Config{RootCAs: s.CertPool(), MinVersion: tls.VersionTLS12}
}

// KgoOpts returns franz-go options that connect as user over TLS (trusting
// the cluster's CA) with SASL SCRAM-SHA-512. Add kgo.SeedBrokers with
// [Security.Brokers].
func (s *Security) KgoOpts(user, password string) []kgo.Opt {
	return []kgo.Opt{
		kgo.DialTLSConfig(s.TLSConfig()),
		kgo.SASL(scram.Auth{User: user, Pass: password}.AsSha512Mechanism()),
	}
}

// Admin returns an admin client of the super user [AdminUser] on the
// SASL_SSL listener. It is closed by [Cluster.Close]; do not close it.
func (s *Security) Admin() *kadm.Client { return s.adm }

// AdminPassword returns the password of [AdminUser].
func (s *Security) AdminPassword() string { return s.sec.adminPass }

// User is a SCRAM-SHA-512 user made by [Security.CreateUser], with what
// the broker keeps of its password (RFC 5802), so that tests can look for
// any of them where they must not appear.
type User struct {
	Name     string
	Password string
	// Iterations and Salt are the credential's PBKDF2 parameters.
	Iterations int
	Salt       []byte
	// SaltedPassword is PBKDF2-HMAC-SHA-512(Password, Salt, Iterations):
	// what the admin API sends and what a client derives.
	SaltedPassword []byte
	// StoredKey is H(HMAC(SaltedPassword, "Client Key")) and ServerKey
	// HMAC(SaltedPassword, "Server Key"): what the broker stores.
	StoredKey []byte
	ServerKey []byte
}

// Principal returns "User:" + the user's name, as ACLs name it.
func (u User) Principal() string { return "User:" + u.Name }

// Secrets returns every secret of the user as raw bytes: the password,
// the salted password, the stored key and the server key. (The salt is
// not a secret.)
func (u User) Secrets() map[string][]byte {
	return map[string][]byte{
		"password":        []byte(u.Password),
		"salted password": u.SaltedPassword,
		"stored key":      u.StoredKey,
		"server key":      u.ServerKey,
	}
}

// CreateUser creates (or replaces) the SCRAM-SHA-512 credential of name
// with a random password, through the admin client, and waits until name
// authenticates on every node. The user has no ACLs: grant them with
// [Security.Grant].
func (s *Security) CreateUser(ctx context.Context, name string) (User, error) {
	return s.CreateUserWithPassword(ctx, name, randomSecret())
}

// CreateUserWithPassword is [Security.CreateUser] with a password of the
// caller's.
func (s *Security) CreateUserWithPassword(ctx context.Context, name, password string) (User, error) {
	u := User{Name: name, Password: password, Iterations: scramIterations, Salt: make([]byte, 24)}
	_, _ = rand.Read(u.Salt) // never fails (crypto/rand)
	var err error
	u.SaltedPassword, err = pbkdf2.Key(sha512.New, password, u.Salt, u.Iterations, sha512.Size)
	if err != nil {
		return User{}, fmt.Errorf("integration: create user %s: %w", name, err)
	}
	ck := hmacSHA512(u.SaltedPassword, "Client Key")
	sk := sha512.Sum512(ck)
	u.StoredKey = sk[:]
	u.ServerKey = hmacSHA512(u.SaltedPassword, "Server Key")
	r, err := s.adm.AlterUserSCRAMs(ctx, nil, []kadm.UpsertSCRAM{{
		User: name, Mechanism: kadm.ScramSha512, Iterations: int32(u.Iterations),
		Salt: u.Salt, SaltedPassword: u.SaltedPassword,
	}})
	if err == nil {
		err = r.Error()
	}
	if err != nil {
		return User{}, fmt.Errorf("integration: create user %s: %w", name, err)
	}
	for _, addr := range s.brokers {
		if err := s.waitAuth(ctx, addr, name, password); err != nil {
			return User{}, err
		}
	}
	return u, nil
}

func hmacSHA512(key []byte, msg string) []byte {
	m := hmac.New(sha512.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// DeleteUser deletes the SCRAM-SHA-512 credential of name.
func (s *Security) DeleteUser(ctx context.Context, name string) error {
	r, err := s.adm.AlterUserSCRAMs(ctx, []kadm.DeleteSCRAM{{User: name, Mechanism: kadm.ScramSha512}}, nil)
	if err == nil {
		err = r.Error()
	}
	if err != nil {
		return fmt.Errorf("integration: delete user %s: %w", name, err)
	}
	return nil
}

// ACL is one rule that allows a principal an operation on one resource,
// by its literal name. Make them with [TopicACL], [GroupACL], [TxnIDACL]
// and [ClusterACL].
type ACL struct {
	Resource kmsg.ACLResourceType
	Name     string // kafka-cluster for the cluster
	Op       kadm.ACLOperation
}

// TopicACL allows op on topic.
func TopicACL(topic string, op kadm.ACLOperation) ACL {
	return ACL{Resource: kmsg.ACLResourceTypeTopic, Name: topic, Op: op}
}

// GroupACL allows op on the consumer group.
func GroupACL(group string, op kadm.ACLOperation) ACL {
	return ACL{Resource: kmsg.ACLResourceTypeGroup, Name: group, Op: op}
}

// TxnIDACL allows op on the transactional ID.
func TxnIDACL(id string, op kadm.ACLOperation) ACL {
	return ACL{Resource: kmsg.ACLResourceTypeTransactionalId, Name: id, Op: op}
}

// ClusterACL allows op on the cluster.
func ClusterACL(op kadm.ACLOperation) ACL {
	return ACL{Resource: kmsg.ACLResourceTypeCluster, Name: "kafka-cluster", Op: op}
}

// String reads like Kafka's own listing: "Topic:orders:Write".
func (a ACL) String() string {
	res := map[kmsg.ACLResourceType]string{
		kmsg.ACLResourceTypeTopic:           "Topic",
		kmsg.ACLResourceTypeGroup:           "Group",
		kmsg.ACLResourceTypeTransactionalId: "TransactionalId",
		kmsg.ACLResourceTypeCluster:         "Cluster",
	}[a.Resource]
	if res == "" {
		res = a.Resource.String()
	}
	var op strings.Builder
	for _, w := range strings.Split(strings.ToLower(a.Op.String()), "_") {
		if w != "" {
			op.WriteString(strings.ToUpper(w[:1]) + w[1:])
		}
	}
	return res + ":" + a.Name + ":" + op.String()
}

func (a ACL) builder(principal string) (*kadm.ACLBuilder, error) {
	b := kadm.NewACLs().Allow(principal).AllowHosts("*").Operations(a.Op).ResourcePatternType(kadm.ACLPatternLiteral)
	switch a.Resource {
	case kmsg.ACLResourceTypeTopic:
		b.Topics(a.Name)
	case kmsg.ACLResourceTypeGroup:
		b.Groups(a.Name)
	case kmsg.ACLResourceTypeTransactionalId:
		b.TransactionalIDs(a.Name)
	case kmsg.ACLResourceTypeCluster:
		b.Clusters()
	default:
		return nil, fmt.Errorf("integration: ACL on resource type %s: not supported", a.Resource)
	}
	return b, nil
}

// Grant allows user (a name, without "User:") every acl, and waits until
// every node enforces them.
func (s *Security) Grant(ctx context.Context, user string, acls ...ACL) error {
	for _, a := range acls {
		b, err := a.builder("User:" + user)
		if err != nil {
			return err
		}
		r, err := s.adm.CreateACLs(ctx, b)
		if err == nil {
			for _, x := range r {
				if x.Err != nil {
					err = x.Err
					break
				}
			}
		}
		if err != nil {
			return fmt.Errorf("integration: grant %s to %s: %w", a, user, err)
		}
	}
	return s.waitACLs(ctx, user, acls, true)
}

// Revoke deletes acls of user (a name, without "User:"), and waits until no
// node enforces them any more.
func (s *Security) Revoke(ctx context.Context, user string, acls ...ACL) error {
	for _, a := range acls {
		b, err := a.builder("User:" + user)
		if err != nil {
			return err
		}
		r, err := s.adm.DeleteACLs(ctx, b)
		if err == nil {
			for _, x := range r {
				if x.Err != nil {
					err = x.Err
					break
				}
			}
		}
		if err != nil {
			return fmt.Errorf("integration: revoke %s from %s: %w", a, user, err)
		}
	}
	return s.waitACLs(ctx, user, acls, false)
}

// ACLs returns every ACL of user that the cluster holds, sorted by
// [ACL.String].
func (s *Security) ACLs(ctx context.Context, user string) ([]ACL, error) {
	return s.describeACLs(ctx, s.cl, user)
}

func (s *Security) describeACLs(ctx context.Context, r kmsg.Requestor, user string) ([]ACL, error) {
	req := kmsg.NewPtrDescribeACLsRequest()
	req.ResourceType = kmsg.ACLResourceTypeAny
	req.ResourcePatternType = kmsg.ACLResourcePatternTypeAny
	req.Principal = kmsg.StringPtr("User:" + user)
	req.Operation = kmsg.ACLOperationAny
	req.PermissionType = kmsg.ACLPermissionTypeAny
	resp, err := req.RequestWith(ctx, r)
	if err != nil {
		return nil, err
	}
	if err := kerr.ErrorForCode(resp.ErrorCode); err != nil {
		return nil, err
	}
	var out []ACL
	for _, res := range resp.Resources {
		for _, a := range res.ACLs {
			if a.PermissionType == kmsg.ACLPermissionTypeAllow {
				out = append(out, ACL{Resource: res.ResourceType, Name: res.ResourceName, Op: a.Operation})
			}
		}
	}
	slices.SortFunc(out, func(a, b ACL) int { return strings.Compare(a.String(), b.String()) })
	return out, nil
}

// waitACLs waits until every broker lists (present) or no longer lists
// each of acls for user: ACLs reach the brokers' authorizers through the
// metadata log, shortly after the controller accepted them.
func (s *Security) waitACLs(ctx context.Context, user string, acls []ACL, present bool) error {
	for _, id := range s.c.ids {
		br := s.cl.Broker(int(id))
		err := poll(ctx, 50*time.Millisecond, fmt.Sprintf("ACLs of %s on broker %d", user, id), func(ctx context.Context) (bool, string, error) {
			have, err := s.describeACLs(ctx, br, user)
			if err != nil {
				var ke *kerr.Error
				if errors.As(err, &ke) && !ke.Retriable {
					return false, "", fmt.Errorf("integration: describe ACLs of %s: %w", user, err)
				}
				return false, err.Error(), nil
			}
			for _, a := range acls {
				if slices.Contains(have, a) != present {
					return false, fmt.Sprintf("%s present: %v", a, !present), nil
				}
			}
			return true, "", nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}
