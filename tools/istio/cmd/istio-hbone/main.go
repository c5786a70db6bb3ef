// Command istio-hbone opens one HBONE tunnel with Istio's own client,
// istio.io/istio/pkg/hbone (HTTP/2 CONNECT with x/net's Transport, as
// Istio's Go test clients use it), through the HBONE server at -proxy to
// -target, writes -send and a newline, and prints what comes back until a
// line that is -send (an echo). The interoperability tests (tests/e2e) run
// it against our ztunnel.
//
//	istio-hbone -proxy 127.10.2.10:15008 -target 127.10.2.10:9000 -send ping \
//	  -cert chain.pem -key key.pem -ca root.pem -server-id spiffe://cluster.local/ns/demo/sa/echo
package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"istio.io/istio/pkg/hbone"
)

func main() {
	proxy := flag.String("proxy", "", "HBONE server address (ip:15008)")
	target := flag.String("target", "", "the CONNECT authority (ip:port)")
	certFile := flag.String("cert", "", "client certificate chain (PEM)")
	keyFile := flag.String("key", "", "client key (PEM)")
	caFile := flag.String("ca", "", "mesh root (PEM)")
	serverID := flag.String("server-id", "", "SPIFFE ID the server's certificate must carry")
	send := flag.String("send", "ping", "line to send; the output ends with its echo")
	flag.Parse()
	if err := run(*proxy, *target, *certFile, *keyFile, *caFile, *serverID, *send); err != nil {
		fmt.Fprintln(os.Stderr, "istio-hbone:", err)
		os.Exit(1)
	}
}

func run(proxy, target, certFile, keyFile, caFile, serverID, send string) error {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return err
	}
	rootPEM, err := os.ReadFile(caFile)
	if err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(rootPEM) {
		return errors.New("no root certificate in " + caFile)
	}
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
		NextProtos:   []string{"h2"},
		// Mesh certificates name workloads by URI SAN, not by host name:
		// the chain and the SPIFFE ID are checked here instead.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("server sent no certificate")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				inter.AddCert(c)
			}
			leaf := cs.PeerCertificates[0]
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
				return err
			}
			for _, u := range leaf.URIs {
				if u.String() == serverID {
					return nil
				}
			}
			return fmt.Errorf("server certificate does not carry %s", serverID)
		},
	}
	c, err := hbone.NewDialer(hbone.Config{ProxyAddress: proxy, TLS: cfg}).Dial("tcp", target)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, send+"\n"); err != nil {
		return err
	}
	br := bufio.NewReader(c)
	for {
		line, err := br.ReadString('\n')
		fmt.Print(line)
		if err != nil {
			return err
		}
		if strings.TrimSuffix(line, "\n") == send {
			return nil
		}
	}
}
