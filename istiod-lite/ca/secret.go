package ca

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// CASecretName is the Secret, in the mesh's root namespace, holding the CA
// root that every replica signs with, named and keyed as Istio's
// self-signed CA stores it.
const CASecretName = "istio-ca-secret"

// Keys of the CA Secret.
const (
	CASecretKeyKey  = "ca-key.pem"
	CASecretCertKey = "ca-cert.pem"
)

// NewShared returns a CA whose root is shared through the Secret
// namespace/CASecretName, so that every replica signs with the same root:
// the Secret's root, when it exists, replaces the one in cfg.StateDir;
// otherwise the root of cfg.StateDir (created if missing) is stored in a
// new Secret. When another replica creates the Secret first, its root wins.
func NewShared(ctx context.Context, cs kubernetes.Interface, namespace string, cfg Config) (*CA, error) {
	for range 3 {
		found, err := restoreFromSecret(ctx, cs, namespace, cfg.StateDir)
		if err != nil {
			return nil, err
		}
		c, err := New(cfg)
		if err != nil || found {
			return c, err
		}
		keyPEM, err := os.ReadFile(filepath.Join(cfg.StateDir, rootKeyFile))
		if err != nil {
			return nil, fmt.Errorf("ca: read root key: %w", err)
		}
		_, err = cs.CoreV1().Secrets(namespace).Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: CASecretName, Namespace: namespace},
			Type:       corev1.SecretTypeOpaque,
			Data:       map[string][]byte{CASecretKeyKey: keyPEM, CASecretCertKey: c.RootPEM()},
		}, metav1.CreateOptions{})
		if err == nil {
			c.log.Info("stored root in secret", "namespace", namespace, "name", CASecretName)
			return c, nil
		}
		if !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("ca: create secret %s/%s: %w", namespace, CASecretName, err)
		}
		// Another replica stored its root first: use it.
	}
	return nil, fmt.Errorf("ca: secret %s/%s keeps changing", namespace, CASecretName)
}

// restoreFromSecret writes the Secret's root into stateDir; found is false
// when there is no Secret.
func restoreFromSecret(ctx context.Context, cs kubernetes.Interface, namespace, stateDir string) (found bool, err error) {
	s, err := cs.CoreV1().Secrets(namespace).Get(ctx, CASecretName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("ca: read secret %s/%s: %w", namespace, CASecretName, err)
	}
	keyPEM, certPEM := s.Data[CASecretKeyKey], s.Data[CASecretCertKey]
	if len(keyPEM) == 0 || len(certPEM) == 0 {
		return false, fmt.Errorf("ca: secret %s/%s lacks %s or %s", namespace, CASecretName, CASecretKeyKey, CASecretCertKey)
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return false, fmt.Errorf("ca: create state dir: %w", err)
	}
	// Remove the certificate first: its presence marks a complete pair.
	if err := os.Remove(filepath.Join(stateDir, rootCertFile)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("ca: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(stateDir, rootKeyFile), keyPEM, 0o600); err != nil {
		return false, fmt.Errorf("ca: write root key: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(stateDir, rootCertFile), certPEM, 0o644); err != nil {
		return false, fmt.Errorf("ca: write root certificate: %w", err)
	}
	return true, nil
}
