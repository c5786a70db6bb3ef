package authz

import "strings"

// Path normalization as Envoy's HTTP connection manager applies it with
// normalize_path: true, merge_slashes: false and
// path_with_escaped_slashes_action: KEEP_UNCHANGED — Istio's default
// (meshConfig.pathNormalization BASE), which its waypoints use. Envoy runs
// Chromium's URL path canonicalizer on the part of :path before the first
// '?' and keeps the query as it is:
//
//   - a missing leading slash is added; an empty path becomes "/";
//   - a backslash becomes '/';
//   - "." and ".." segments (also written "%2e", any case) are removed per
//     RFC 3986, never above the root;
//   - %XX escapes of unreserved characters (ALPHA, DIGIT, '-', '.', '_',
//     '~') are decoded; other escapes, "%2F" and "%5C" included, are kept
//     with their case; a '%' not followed by two hex digits is kept, and
//     made "%25" when decoding the characters after it would turn it into
//     an escape;
//   - control characters, space, '"', '#', '<', '>', '?' (not the first,
//     which starts the query), '\\' already handled, '^', '`', '{', '|',
//     '}', DEL and non-ASCII bytes are escaped as %XX (uppercase hex);
//   - a NUL byte, raw or escaped (%00), makes the path invalid: Envoy
//     answers 400.
//
// Case is not normalized and consecutive slashes are not merged.

// pathFlags classifies each byte as Chromium's kPathCharLookup does.
const (
	pcPass     = 0
	pcSpecial  = 1
	pcEscape   = 2 | pcSpecial
	pcUnescape = 4
	pcInvalid  = 8 | pcSpecial
)

var pathFlags = func() (t [256]uint8) {
	for c := range 256 {
		switch {
		case c == 0:
			t[c] = pcInvalid
		case c < 0x20 || c >= 0x7f:
			t[c] = pcEscape
		case 'A' <= c && c <= 'Z', 'a' <= c && c <= 'z', '0' <= c && c <= '9', c == '-', c == '_', c == '~':
			t[c] = pcUnescape
		}
	}
	for _, c := range []byte(" \"#%<>?\\^`{|}") {
		t[c] = pcEscape
	}
	t['.'] = pcSpecial
	return t
}()

// NormalizePath returns path (an HTTP :path, query included) normalized as
// Istio's waypoints (Envoy with normalize_path) normalize it before routing
// and authorization, and false when Envoy would reject it with 400. The
// query is kept unchanged. The waypoint forwards the normalized path.
func NormalizePath(path string) (string, bool) { return normalizePath(path) }

func normalizePath(full string) (string, bool) {
	path, query := full, ""
	if i := strings.IndexByte(full, '?'); i >= 0 {
		path, query = full[:i], full[i:]
	}
	if pathClean(path) {
		return full, true
	}
	out, ok := canonicalPath(path)
	return string(out) + query, ok
}

// stripQuery returns the path of a normalized :path without its query (and
// fragment, which normalization has escaped already).
func stripQuery(p string) string {
	if i := strings.IndexAny(p, "?#"); i >= 0 {
		return p[:i]
	}
	return p
}

// pathClean reports whether canonicalization leaves path unchanged: it
// starts with '/', holds no byte that needs special handling, and no dot
// right after a slash.
func pathClean(path string) bool {
	if path == "" || path[0] != '/' {
		return false
	}
	for i := 1; i < len(path); i++ {
		c := path[i]
		if pathFlags[c]&pcSpecial == 0 {
			continue
		}
		if c == '.' && path[i-1] != '/' {
			continue
		}
		return false
	}
	return true
}

// isURLSlash reports whether c separates path segments ('/' or '\\').
func isURLSlash(c byte) bool { return c == '/' || c == '\\' }

// isDot returns the length of the dot at spec[i]: 1 for '.', 3 for "%2e"
// (any case), 0 for none.
func isDot(spec string, i int) int {
	if spec[i] == '.' {
		return 1
	}
	if spec[i] == '%' && i+3 <= len(spec) && spec[i+1] == '2' && (spec[i+2] == 'e' || spec[i+2] == 'E') {
		return 3
	}
	return 0
}

func unhex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	case 'A' <= c && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// decodeEscaped decodes the escape "%XX" at s[i].
func decodeEscaped(s []byte, i int) (byte, bool) {
	if i+3 > len(s) {
		return 0, false
	}
	hi, ok1 := unhex(s[i+1])
	lo, ok2 := unhex(s[i+2])
	return hi<<4 | lo, ok1 && ok2
}

const upperHex = "0123456789ABCDEF"

func appendEscaped(out []byte, c byte) []byte {
	return append(out, '%', upperHex[c>>4], upperHex[c&0xf])
}

// canonicalPath canonicalizes a path without query as Chromium's
// CanonicalizePath (Envoy's snapshot) does; false when the path holds an
// invalid character.
func canonicalPath(spec string) ([]byte, bool) {
	out := make([]byte, 0, len(spec)+8)
	if spec == "" {
		return append(out, '/'), true
	}
	if !isURLSlash(spec[0]) {
		out = append(out, '/')
	}
	ok := true
	lastInvalidPercent := -10 // index in out of a '%' that began no valid escape
	end := len(spec)
	for i := 0; i < end; i++ {
		c := spec[i]
		flags := pathFlags[c]
		if flags&pcSpecial == 0 {
			out = append(out, c)
			continue
		}
		if dotLen := isDot(spec, i); dotLen > 0 {
			if len(out) > 0 && out[len(out)-1] == '/' {
				switch kind, consumed := classifyAfterDot(spec, i+dotLen); kind {
				case notDirectory:
					out = append(out, '.')
					i += dotLen - 1
				case directoryCur:
					i += dotLen + consumed - 1
				case directoryUp:
					out = backUpToPreviousSlash(out)
					i += dotLen + consumed - 1
				}
			} else {
				out = append(out, '.')
				i += dotLen - 1
			}
			continue
		}
		switch {
		case c == '\\':
			out = append(out, '/')
		case c == '%':
			if i+3 <= end {
				hi, ok1 := unhex(spec[i+1])
				lo, ok2 := unhex(spec[i+2])
				if ok1 && ok2 {
					v := hi<<4 | lo
					i += 2
					if pathFlags[v]&pcUnescape != 0 {
						out = append(out, v)
						if lastInvalidPercent >= len(out)-3 {
							out = checkForNestedEscapes(spec, i+1, lastInvalidPercent, out)
						}
					} else {
						out = append(out, '%', spec[i-1], spec[i])
						if pathFlags[v]&pcInvalid == pcInvalid {
							ok = false
						}
					}
					continue
				}
			}
			lastInvalidPercent = len(out)
			out = append(out, '%')
		case flags&pcInvalid == pcInvalid:
			out = appendEscaped(out, c)
			ok = false
		case flags&pcEscape == pcEscape:
			out = appendEscaped(out, c)
		}
	}
	return out, ok
}

type dotKind uint8

const (
	notDirectory dotKind = iota
	directoryCur
	directoryUp
)

// classifyAfterDot tells what the dot ending before spec[after] is, and how
// many input bytes after it belong to it.
func classifyAfterDot(spec string, after int) (dotKind, int) {
	if after == len(spec) {
		return directoryCur, 0
	}
	if isURLSlash(spec[after]) {
		return directoryCur, 1
	}
	if second := isDot(spec, after); second > 0 {
		next := after + second
		if next == len(spec) {
			return directoryUp, second
		}
		if isURLSlash(spec[next]) {
			return directoryUp, second + 1
		}
	}
	return notDirectory, 0
}

// backUpToPreviousSlash drops the last segment of out, which ends with a
// slash; never above the first slash.
func backUpToPreviousSlash(out []byte) []byte {
	i := len(out) - 1
	if i == 0 {
		return out
	}
	i--
	for out[i] != '/' && i > 0 {
		i--
	}
	return out[:i+1]
}

// checkForNestedEscapes makes the '%' at out[lastInvalid] "%25" when the
// characters just decoded after it would make it a valid escape (for
// example "%%30%30"), so that the output cannot be decoded into something
// else later. next is the index of the next unread input byte.
func checkForNestedEscapes(spec string, next, lastInvalid int, out []byte) []byte {
	length := len(out)
	lastUnescaped := out[length-1]
	appendNext := lastInvalid == length-2
	if appendNext {
		if next == len(spec) || spec[next] >= 0x80 {
			return out
		}
		out = append(out, spec[next])
	}
	if _, ok := decodeEscaped(out, lastInvalid); ok {
		if !appendNext {
			out = append(out, out[lastInvalid+1])
		}
		out[lastInvalid+1] = '2'
		out[lastInvalid+2] = '5'
		return append(out, lastUnescaped)
	}
	if appendNext {
		out = out[:length]
	}
	return out
}
