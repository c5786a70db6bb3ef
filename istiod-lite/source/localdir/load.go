// Package localdir is istiod-lite's local-mode source: it reads Kubernetes
// objects from a directory of YAML (or JSON) files, the same manifests a user
// would kubectl apply, and hands them to the model as model.Inputs.
//
// Load reads the directory once. A Watcher follows it (fsnotify plus a slow
// poll) and publishes a new Snapshot after every change. A file that fails to
// parse is reported with its file and line, and the watcher keeps the last
// good version of that file's objects, so a half-edited file never removes
// its pods from the mesh.
//
// Besides the objects the model reads, the directory holds the per-node
// tokens local-mode ztunnels present to the CA: the Secret
// istio-system/ztunnel-node-tokens, each key a node name and its value the
// node's token.
package localdir

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambient-go/mesh/istiod-lite/model"
)

// The Secret holding local-mode node tokens.
const (
	NodeTokensNamespace = "istio-system"
	NodeTokensName      = "ztunnel-node-tokens"
)

// Snapshot is everything read from the directory. It is shared with the
// watcher's later snapshots and must be treated as read-only.
type Snapshot struct {
	Inputs *model.Inputs
	// NodeTokens maps a token to its node name, from the Secret
	// istio-system/ztunnel-node-tokens (data and stringData; stringData wins).
	NodeTokens map[string]string
	Nodes      []*corev1.Node
	Secrets    []*corev1.Secret
	// Raw holds objects of kinds not decoded yet, in file order.
	Raw []*RawObject
}

// Load reads the directory once, recursively: files named *.yaml, *.yml or
// *.json, skipping names that start with a dot. A file that fails to parse
// yields a *ParseError and contributes no objects; the objects of the other
// files are still returned. A duplicate object (same kind, namespace and
// name) yields an error naming both places; the first one, in path order, is
// kept.
func Load(dir string) (*Snapshot, []error) {
	files, _, err := scan(dir)
	if err != nil {
		snap, _ := assemble(nil)
		return snap, []error{err}
	}
	var errs []error
	states := map[string]*fileState{}
	for _, f := range files {
		st := &fileState{}
		if err := st.read(f.path); err != nil {
			errs = append(errs, err)
			continue
		}
		states[f.path] = st
	}
	snap, dups := assemble(states)
	return snap, append(errs, dups...)
}

// fileInfo is what the poll compares to notice changes.
type fileInfo struct {
	path  string
	size  int64
	mtime time.Time
}

// scan lists the candidate files and the directories under dir, in lexical
// order. Symbolic links to files are followed (as in a ConfigMap volume);
// links to directories are not.
func scan(dir string) ([]fileInfo, []string, error) {
	var files []fileInfo
	var dirs []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if path == dir {
				return err
			}
			return nil // vanished or unreadable while walking: skip it
		}
		if path != dir && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			dirs = append(dirs, path)
			return nil
		}
		switch strings.ToLower(filepath.Ext(path)) {
		case ".yaml", ".yml", ".json":
		default:
			return nil
		}
		info, err := os.Stat(path) // follows links
		if err != nil || !info.Mode().IsRegular() {
			return nil
		}
		files = append(files, fileInfo{path: path, size: info.Size(), mtime: info.ModTime()})
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("reading directory %s: %w", dir, err)
	}
	return files, dirs, nil
}

// fileState is what is known of one file: the objects of its last good
// version and, when its current version does not parse, the error.
type fileState struct {
	objs []object
	docs map[docSum]object // the documents of objs, by content
	sum  [sha256.Size]byte // of the last good content
	good bool              // whether objs/sum hold a good version
	err  error             // current read or parse error
	// size and mtime of the file when last read (by the watcher).
	size  int64
	mtime time.Time
}

// read reads and parses the file. On success it replaces the good version;
// on failure it records the error and keeps the previous good version.
func (st *fileState) read(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		st.err = fmt.Errorf("reading %s: %w", path, err)
		return st.err
	}
	sum := sha256.Sum256(data)
	if st.good && sum == st.sum {
		st.err = nil
		return nil
	}
	objs, docs, err := parseFileCached(path, data, st.docs)
	if err != nil {
		st.err = err
		return err
	}
	st.objs, st.docs, st.sum, st.good, st.err = objs, docs, sum, true, nil
	return nil
}

// sortedPaths returns the paths of states in lexical order.
func sortedPaths(states map[string]*fileState) []string {
	paths := make([]string, 0, len(states))
	for p := range states {
		paths = append(paths, p)
	}
	slices.Sort(paths)
	return paths
}

// assemble builds a snapshot from the good versions of the files, in path
// order; of duplicate objects, the first is kept, and every duplicate is
// reported with both places.
func assemble(states map[string]*fileState) (*Snapshot, []error) {
	type place struct {
		file string
		line int
	}
	snap := &Snapshot{Inputs: &model.Inputs{}, NodeTokens: map[string]string{}}
	n := 0
	for _, st := range states {
		n += len(st.objs)
	}
	first := make(map[objectKey]place, n)
	var errs []error
	for _, path := range sortedPaths(states) {
		for _, o := range states[path].objs {
			if p, ok := first[o.key]; ok {
				errs = append(errs, fmt.Errorf("duplicate %s: defined in %s:%d and %s:%d; using the first", o.key, p.file, p.line, path, o.line))
				continue
			}
			first[o.key] = place{path, o.line}
			switch obj := o.obj.(type) {
			case *corev1.Namespace:
				snap.Inputs.Namespaces = append(snap.Inputs.Namespaces, obj)
			case *corev1.Pod:
				snap.Inputs.Pods = append(snap.Inputs.Pods, obj)
			case *corev1.Service:
				snap.Inputs.Services = append(snap.Inputs.Services, obj)
			case *corev1.ServiceAccount:
				snap.Inputs.ServiceAccounts = append(snap.Inputs.ServiceAccounts, obj)
			case *discoveryv1.EndpointSlice:
				snap.Inputs.EndpointSlices = append(snap.Inputs.EndpointSlices, obj)
			case *corev1.Node:
				snap.Nodes = append(snap.Nodes, obj)
			case *corev1.Secret:
				snap.Secrets = append(snap.Secrets, obj)
				if obj.Namespace == NodeTokensNamespace && obj.Name == NodeTokensName {
					snap.NodeTokens = nodeTokens(obj)
				}
			case *securityv1.AuthorizationPolicy:
				snap.Inputs.AuthorizationPolicies = append(snap.Inputs.AuthorizationPolicies, obj)
			case *securityv1.PeerAuthentication:
				snap.Inputs.PeerAuthentications = append(snap.Inputs.PeerAuthentications, obj)
			case *gatewayv1.Gateway:
				snap.Inputs.Gateways = append(snap.Inputs.Gateways, obj)
			case *gatewayv1.GatewayClass:
				snap.Inputs.GatewayClasses = append(snap.Inputs.GatewayClasses, obj)
			case *gatewayv1.HTTPRoute:
				snap.Inputs.HTTPRoutes = append(snap.Inputs.HTTPRoutes, obj)
			case *gatewayv1.GRPCRoute:
				snap.Inputs.GRPCRoutes = append(snap.Inputs.GRPCRoutes, obj)
			case *gatewayv1.TCPRoute:
				snap.Inputs.TCPRoutes = append(snap.Inputs.TCPRoutes, obj)
			case *gatewayv1.ReferenceGrant:
				snap.Inputs.ReferenceGrants = append(snap.Inputs.ReferenceGrants, obj)
			case *RawObject:
				snap.Raw = append(snap.Raw, obj)
			}
		}
	}
	return snap, errs
}

// nodeTokens inverts the node-token Secret: node name → token becomes
// token → node name. Empty tokens, and tokens given to more than one node
// (which could not tell the nodes apart), are ignored.
func nodeTokens(s *corev1.Secret) map[string]string {
	byNode := map[string]string{}
	for node, tok := range s.Data {
		byNode[node] = string(tok)
	}
	for node, tok := range s.StringData {
		byNode[node] = tok
	}
	out := make(map[string]string, len(byNode))
	shared := map[string]bool{}
	for node, tok := range byNode {
		tok = strings.TrimSpace(tok)
		if tok == "" || shared[tok] {
			continue
		}
		if _, ok := out[tok]; ok {
			delete(out, tok)
			shared[tok] = true
			continue
		}
		out[tok] = node
	}
	return out
}
