// Package e2e runs the mesh end to end, in-process on loopback: istiod-lite
// in local mode, one ztunnel per node, and small applications as pods.
package e2e

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
