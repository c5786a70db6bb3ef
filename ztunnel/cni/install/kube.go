package install

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// saDir is where Kubernetes mounts the pod's ServiceAccount credentials.
const saDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// DaemonSetGone reports whether the DaemonSet namespace/name was deleted
// (absent, or with a deletion timestamp), asked of the API server with the
// pod's own ServiceAccount credentials. A pod stopped by a rolling update
// sees its DaemonSet still there and keeps the plugin chained; one stopped
// because the DaemonSet is being deleted removes it. ztunnel imports no
// Kubernetes package, so this is one GET with net/http.
func DaemonSetGone(ctx context.Context, namespace, name string) (bool, error) {
	host, port := os.Getenv("KUBERNETES_SERVICE_HOST"), os.Getenv("KUBERNETES_SERVICE_PORT")
	if host == "" || port == "" {
		return false, errors.New("not running in a cluster (KUBERNETES_SERVICE_HOST unset)")
	}
	return daemonSetGone(ctx, "https://"+net.JoinHostPort(host, port), saDir, namespace, name)
}

func daemonSetGone(ctx context.Context, server, sa, namespace, name string) (bool, error) {
	token, err := os.ReadFile(sa + "/token")
	if err != nil {
		return false, err
	}
	caPEM, err := os.ReadFile(sa + "/ca.crt")
	if err != nil {
		return false, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return false, errors.New("no certificate in ca.crt")
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet,
		fmt.Sprintf("%s/apis/apps/v1/namespaces/%s/daemonsets/%s", server, namespace, name), nil)
	if err != nil {
		return false, err
	}
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	req.Header.Set("Accept", "application/json")
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusNotFound:
		return true, nil
	case http.StatusOK:
		var ds struct {
			Metadata struct {
				DeletionTimestamp *string `json:"deletionTimestamp"`
			} `json:"metadata"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&ds); err != nil {
			return false, fmt.Errorf("decoding the DaemonSet: %w", err)
		}
		return ds.Metadata.DeletionTimestamp != nil, nil
	default:
		return false, fmt.Errorf("getting DaemonSet %s/%s: %s", namespace, name, resp.Status)
	}
}
