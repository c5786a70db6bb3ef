package podrun

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/ambient-go/mesh/tests/kube"
)

// ServiceAccountDir is where the kube-api-access volume is mounted.
const ServiceAccountDir = "/var/run/secrets/kubernetes.io/serviceaccount"

// apiAccessVolume is the name of the volume standing in for the one the
// ServiceAccount admission plugin adds.
const apiAccessVolume = "kube-api-access-podrun"

// kubeObjects reads ConfigMaps and Secrets from the API server.
type kubeObjects struct{ kc *kube.Cluster }

func (o kubeObjects) configMap(ctx context.Context, namespace, name string) (map[string]string, error) {
	cm, err := o.kc.Clientset.CoreV1().ConfigMaps(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("ConfigMap %s/%s: %w", namespace, name, errNotFound)
	}
	if err != nil {
		return nil, err
	}
	data := map[string]string{}
	for k, v := range cm.Data {
		data[k] = v
	}
	for k, v := range cm.BinaryData {
		data[k] = string(v)
	}
	return data, nil
}

func (o kubeObjects) secret(ctx context.Context, namespace, name string) (map[string][]byte, error) {
	s, err := o.kc.Clientset.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("Secret %s/%s: %w", namespace, name, errNotFound)
	}
	if err != nil {
		return nil, err
	}
	return s.Data, nil
}

// token is a projected ServiceAccount token file the pod keeps fresh.
type token struct {
	path     string // on the host
	audience string
	seconds  int64
	expires  time.Time
}

// needsAPIAccess reports whether the pod gets the kube-api-access volume:
// its token is not opted out of and no container mounts something at
// ServiceAccountDir itself.
func needsAPIAccess(pod *corev1.Pod) bool {
	if a := pod.Spec.AutomountServiceAccountToken; a != nil && !*a {
		return false
	}
	for _, c := range allContainers(pod) {
		for _, m := range c.VolumeMounts {
			if filepath.Clean(m.MountPath) == ServiceAccountDir {
				return false
			}
		}
	}
	return true
}

// makeVolumes writes every volume of the pod under p.dir/volumes and
// records the directories by name; hostPath volumes are directories of
// the node's.
func (p *pod) makeVolumes(ctx context.Context) error {
	p.volumes = map[string]string{}
	p.tokens = nil
	objs := kubeObjects{p.kc}
	vols := p.obj.Spec.Volumes
	if needsAPIAccess(p.obj) {
		exp := int64(3607) // the admission plugin's
		vols = append(vols, corev1.Volume{Name: apiAccessVolume, VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
			Sources: []corev1.VolumeProjection{
				{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: &exp}},
				{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}}}},
			},
		}}})
	}
	for _, v := range vols {
		dir := filepath.Join(p.dir, "volumes", v.Name)
		switch {
		case v.EmptyDir != nil:
			if err := os.MkdirAll(dir, 0o777); err != nil {
				return err
			}
			// World-writable, as the kubelet makes it (umask aside).
			if err := os.Chmod(dir, 0o777); err != nil {
				return err
			}
		case v.HostPath != nil:
			var err error
			if dir, err = p.hostPath(v.HostPath); err != nil {
				return fmt.Errorf("volume %s: %w", v.Name, err)
			}
		case v.ConfigMap != nil:
			data, err := objs.configMap(ctx, p.obj.Namespace, v.ConfigMap.Name)
			if errors.Is(err, errNotFound) && optional(v.ConfigMap.Optional) {
				data, err = nil, nil
			}
			if err != nil {
				return fmt.Errorf("volume %s: %w", v.Name, err)
			}
			files, err := project(data, v.ConfigMap.Items, optional(v.ConfigMap.Optional))
			if err != nil {
				return fmt.Errorf("volume %s: ConfigMap %s: %w", v.Name, v.ConfigMap.Name, err)
			}
			if err := writeFiles(dir, files); err != nil {
				return fmt.Errorf("volume %s: %w", v.Name, err)
			}
		case v.Secret != nil:
			data, err := objs.secret(ctx, p.obj.Namespace, v.Secret.SecretName)
			if errors.Is(err, errNotFound) && optional(v.Secret.Optional) {
				data, err = nil, nil
			}
			if err != nil {
				return fmt.Errorf("volume %s: %w", v.Name, err)
			}
			files, err := project(stringData(data), v.Secret.Items, optional(v.Secret.Optional))
			if err != nil {
				return fmt.Errorf("volume %s: Secret %s: %w", v.Name, v.Secret.SecretName, err)
			}
			if err := writeFiles(dir, files); err != nil {
				return fmt.Errorf("volume %s: %w", v.Name, err)
			}
		case v.Projected != nil:
			if err := p.projected(ctx, objs, dir, v.Projected); err != nil {
				return fmt.Errorf("volume %s: %w", v.Name, err)
			}
		default:
			return fmt.Errorf("volume %s: only emptyDir, hostPath, configMap, secret and projected volumes are supported", v.Name)
		}
		p.volumes[v.Name] = dir
	}
	return nil
}

// hostPath returns the node's directory (or file) for a hostPath volume,
// creating it as its type asks.
func (p *pod) hostPath(hp *corev1.HostPathVolumeSource) (string, error) {
	path := filepath.Join(p.r.cfg.NodeDir(p.obj.Spec.NodeName), filepath.Clean("/"+hp.Path))
	if slices.Contains(p.r.cfg.SharedHostPaths, filepath.Clean("/"+hp.Path)) {
		path = filepath.Clean("/" + hp.Path)
	}
	typ := corev1.HostPathUnset
	if hp.Type != nil {
		typ = *hp.Type
	}
	switch typ {
	case corev1.HostPathUnset, corev1.HostPathDirectoryOrCreate:
		// Unset: no check in Kubernetes; a missing path becomes a
		// directory here so that the bind mount has a source.
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			if err := os.MkdirAll(path, 0o755); err != nil {
				return "", err
			}
		}
	case corev1.HostPathDirectory:
		if fi, err := os.Stat(path); err != nil || !fi.IsDir() {
			return "", fmt.Errorf("hostPath %s is not a directory on node %s", hp.Path, p.obj.Spec.NodeName)
		}
	case corev1.HostPathFileOrCreate:
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return "", err
		}
		f, err := os.OpenFile(path, os.O_CREATE|os.O_RDONLY, 0o644)
		if err != nil {
			return "", err
		}
		f.Close()
	case corev1.HostPathFile:
		if fi, err := os.Stat(path); err != nil || !fi.Mode().IsRegular() {
			return "", fmt.Errorf("hostPath %s is not a file on node %s", hp.Path, p.obj.Spec.NodeName)
		}
	default:
		return "", fmt.Errorf("hostPath type %s is not supported", typ)
	}
	return path, nil
}

// projected writes a projected volume's sources into dir and records its
// tokens for refreshing.
func (p *pod) projected(ctx context.Context, objs objects, dir string, v *corev1.ProjectedVolumeSource) error {
	files := map[string]string{}
	for _, src := range v.Sources {
		switch {
		case src.ServiceAccountToken != nil:
			sat := src.ServiceAccountToken
			seconds := int64(3600)
			if sat.ExpirationSeconds != nil {
				seconds = *sat.ExpirationSeconds
			}
			tok := &token{path: filepath.Join(dir, filepath.Clean(sat.Path)), audience: sat.Audience, seconds: seconds}
			value, err := p.requestToken(ctx, tok)
			if err != nil {
				return err
			}
			files[sat.Path] = value
			p.tokens = append(p.tokens, tok)
		case src.ConfigMap != nil:
			data, err := objs.configMap(ctx, p.obj.Namespace, src.ConfigMap.Name)
			if errors.Is(err, errNotFound) && optional(src.ConfigMap.Optional) {
				data, err = nil, nil
			}
			if err != nil {
				return err
			}
			fs, err := project(data, src.ConfigMap.Items, optional(src.ConfigMap.Optional))
			if err != nil {
				return fmt.Errorf("ConfigMap %s: %w", src.ConfigMap.Name, err)
			}
			for k, v := range fs {
				files[k] = v
			}
		case src.Secret != nil:
			data, err := objs.secret(ctx, p.obj.Namespace, src.Secret.Name)
			if errors.Is(err, errNotFound) && optional(src.Secret.Optional) {
				data, err = nil, nil
			}
			if err != nil {
				return err
			}
			fs, err := project(stringData(data), src.Secret.Items, optional(src.Secret.Optional))
			if err != nil {
				return fmt.Errorf("Secret %s: %w", src.Secret.Name, err)
			}
			for k, v := range fs {
				files[k] = v
			}
		case src.DownwardAPI != nil:
			fields := fieldValues(p.obj, p.podIP(), p.hostIP())
			for _, it := range src.DownwardAPI.Items {
				if it.FieldRef == nil {
					return fmt.Errorf("downward API file %s: only fieldRef is supported", it.Path)
				}
				v, ok := fields[it.FieldRef.FieldPath]
				if !ok {
					return fmt.Errorf("downward API file %s: field %s is not supported", it.Path, it.FieldRef.FieldPath)
				}
				files[it.Path] = v
			}
		case src.ClusterTrustBundle != nil || src.PodCertificate != nil:
			return errors.New("clusterTrustBundle and podCertificate projections are not supported")
		}
	}
	// The API server's CA for the kube-api-access volume.
	if filepath.Base(dir) == apiAccessVolume {
		files["ca.crt"] = string(p.kc.REST.CAData)
	}
	return writeFiles(dir, files)
}

// requestToken asks the TokenRequest API for tok, bound to the pod, as the
// kubelet does for a projected token.
func (p *pod) requestToken(ctx context.Context, tok *token) (string, error) {
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		ExpirationSeconds: &tok.seconds,
		BoundObjectRef: &authenticationv1.BoundObjectReference{
			Kind: "Pod", APIVersion: "v1", Name: p.obj.Name, UID: p.obj.UID,
		},
	}}
	if tok.audience != "" {
		req.Spec.Audiences = []string{tok.audience}
	}
	sa := p.obj.Spec.ServiceAccountName
	if sa == "" {
		// Without the ServiceAccount admission plugin (the harness runs
		// none) a pod created by a controller names no ServiceAccount;
		// the API server refuses to bind default's token to it.
		sa = "default"
		req.Spec.BoundObjectRef = nil
	}
	resp, err := p.kc.Clientset.CoreV1().ServiceAccounts(p.obj.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("token for %s/%s (audience %q): %w", p.obj.Namespace, sa, tok.audience, err)
	}
	tok.expires = resp.Status.ExpirationTimestamp.Time
	return resp.Status.Token, nil
}

// refreshTokens rewrites each token once 80 % of its lifetime has passed
// (the kubelet's rule), until ctx ends.
func (p *pod) refreshTokens(ctx context.Context) {
	for {
		var next time.Time
		for _, t := range p.tokens {
			at := t.expires.Add(-time.Duration(float64(time.Duration(t.seconds)*time.Second) * 0.2))
			if next.IsZero() || at.Before(next) {
				next = at
			}
		}
		if next.IsZero() {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(next)):
		}
		for _, t := range p.tokens {
			if time.Until(t.expires) > time.Duration(float64(time.Duration(t.seconds)*time.Second)*0.2) {
				continue
			}
			v, err := p.requestToken(ctx, t)
			if err == nil {
				err = writeFile(t.path, v)
			}
			if err != nil {
				if ctx.Err() != nil {
					return
				}
				p.log.Warn("refreshing a projected token failed", "file", t.path, "err", err)
				// Retry in a while rather than spinning.
				t.expires = time.Now().Add(time.Duration(float64(time.Duration(t.seconds)*time.Second)*0.2) + 10*time.Second)
			}
		}
	}
}

// project selects a ConfigMap's or Secret's keys as files: all of them,
// or the listed items (each key must exist unless optional).
func project(data map[string]string, items []corev1.KeyToPath, optional bool) (map[string]string, error) {
	files := map[string]string{}
	if len(items) == 0 {
		for k, v := range data {
			files[k] = v
		}
		return files, nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			if optional {
				continue
			}
			return nil, fmt.Errorf("no key %q", it.Key)
		}
		files[it.Path] = v
	}
	return files, nil
}

func stringData(d map[string][]byte) map[string]string {
	m := make(map[string]string, len(d))
	for k, v := range d {
		m[k] = string(v)
	}
	return m
}

// writeFiles writes files (relative paths) under dir, readable by every
// user: the containers of a pod may run as any user (Kubernetes' default
// mode is 0644; the kubelet's ownership rules for tokens are not copied).
func writeFiles(dir string, files map[string]string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, val := range files {
		if !filepath.IsLocal(name) {
			return fmt.Errorf("path %q leaves the volume", name)
		}
		if err := writeFile(filepath.Join(dir, name), val); err != nil {
			return err
		}
	}
	return nil
}

// writeFile replaces path atomically (a process reading it sees the old
// or the new content).
func writeFile(path, val string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp" + strconv.Itoa(os.Getpid())
	if err := os.WriteFile(tmp, []byte(val), 0o644); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
