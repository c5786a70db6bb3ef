package images

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/pem"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/crypto/x509roots/fallback/bundle"
)

// file is one regular file of a layer.
type file struct {
	path string // absolute, e.g. /etc/passwd
	mode int64
	data []byte
}

// layer makes a reproducible gzip-compressed layer of files: their parent
// directories are added, entries are sorted by name, and every entry has
// the time epoch and owner root.
func layer(files []file, epoch time.Time) (v1.Layer, error) {
	dirs := map[string]bool{}
	for _, f := range files {
		for d := path.Dir(f.path); d != "/"; d = path.Dir(d) {
			dirs[d] = true
		}
	}
	type entry struct {
		hdr  tar.Header
		data []byte
	}
	var entries []entry
	for d := range dirs {
		entries = append(entries, entry{hdr: tar.Header{Typeflag: tar.TypeDir, Name: strings.TrimPrefix(d, "/") + "/", Mode: 0o755}})
	}
	for _, f := range files {
		entries = append(entries, entry{hdr: tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(f.path, "/"), Mode: f.mode, Size: int64(len(f.data))}, data: f.data})
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].hdr.Name < entries[j].hdr.Name })

	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz) // no name, no mtime in the header
	tw := tar.NewWriter(zw)
	for _, e := range entries {
		e.hdr.ModTime = epoch
		e.hdr.Uname, e.hdr.Gname = "root", "root"
		e.hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(&e.hdr); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	b := gz.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

const (
	passwd = "root:x:0:0:root:/root:/sbin/nologin\n" +
		"istio-proxy:x:1337:1337:istio-proxy:/nonexistent:/sbin/nologin\n"
	group = "root:x:0:\n" +
		"istio-proxy:x:1337:\n"
	caPath = "/etc/ssl/certs/ca-certificates.crt"
)

// baseFiles are the files of the base layer: the users, and the CA
// certificates if asked.
func baseFiles(caCerts bool) []file {
	files := []file{
		{path: "/etc/passwd", mode: 0o644, data: []byte(passwd)},
		{path: "/etc/group", mode: 0o644, data: []byte(group)},
	}
	if caCerts {
		files = append(files, file{path: caPath, mode: 0o644, data: caBundle()})
	}
	return files
}

// caBundle is the PEM bundle of the roots in Go's x509roots module (the
// Mozilla NSS trust store, pinned by the module version in go.sum, so the
// layer does not depend on the machine's certificates). Roots with
// constraints a PEM file cannot express (distrust after a date) are left
// out.
func caBundle() []byte {
	var b bytes.Buffer
	for r := range bundle.Roots() {
		if r.Constraint != nil {
			continue
		}
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: r.Certificate})
	}
	return b.Bytes()
}
