//go:build !unix

package hbone

import "io"

// newSinkWriter: only unix writes in RawConn.Write's callback; elsewhere
// WriteTo writes everything itself.
func newSinkWriter(io.Writer) sinkWriter { return nil }
