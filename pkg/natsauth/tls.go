package natsauth

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"path/filepath"
	"time"
)

// certValidity is how long the generated certificates are valid; rotate
// them with auth init --force before (docs/security.md).
const certValidity = 2 * 365 * 24 * time.Hour

// writePKI writes a CA, a server certificate for hosts (+ localhost,
// 127.0.0.1) that routes also present as clients, and a client
// certificate, all ECDSA P-256.
func writePKI(w *writer, hosts []string, now time.Time) error {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	ca := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "candlekeep NATS CA", Organization: []string{"candlekeep"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certValidity),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		return fmt.Errorf("tls: CA: %w", err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return fmt.Errorf("tls: CA: %w", err)
	}
	if err := w.file(filepath.Join(TLSDir, CAFile), pemBlock("CERTIFICATE", caDER)); err != nil {
		return err
	}
	leaf := func(cn string, names []string, usage []x509.ExtKeyUsage, certFile, keyFile string) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return fmt.Errorf("tls: %w", err)
		}
		c := &x509.Certificate{
			SerialNumber: serial(),
			Subject:      pkix.Name{CommonName: cn, Organization: []string{"candlekeep"}},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(certValidity),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  usage,
		}
		for _, n := range names {
			if ip := net.ParseIP(n); ip != nil {
				c.IPAddresses = append(c.IPAddresses, ip)
			} else {
				c.DNSNames = append(c.DNSNames, n)
			}
		}
		der, err := x509.CreateCertificate(rand.Reader, c, caCert, &key.PublicKey, caKey)
		if err != nil {
			return fmt.Errorf("tls: %s: %w", cn, err)
		}
		kb, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return fmt.Errorf("tls: %s: %w", cn, err)
		}
		if err := w.file(filepath.Join(TLSDir, certFile), pemBlock("CERTIFICATE", der)); err != nil {
			return err
		}
		return w.file(filepath.Join(TLSDir, keyFile), pemBlock("EC PRIVATE KEY", kb))
	}
	names := []string{"localhost", "127.0.0.1"}
	for _, h := range hosts {
		if h != "localhost" && h != "127.0.0.1" && h != "" {
			names = append(names, h)
		}
	}
	// Routes present the server certificate as clients: both usages.
	if err := leaf("candlekeep nats-server", names, []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		ServerCert, ServerKey); err != nil {
		return err
	}
	return leaf("candlekeep client", nil, []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, ClientCert, ClientKey)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return big.NewInt(time.Now().UnixNano())
	}
	return n
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}
