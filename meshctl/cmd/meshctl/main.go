// Command meshctl is the operator CLI of the mesh: it inspects ztunnels and
// waypoints, explains the path of a connection, checks an installation and
// streams access logs. See docs/meshctl.md.
package main

import (
	"os"

	"github.com/ambient-go/mesh/meshctl/internal/cli"
)

func main() {
	os.Exit(cli.Main(os.Args[1:], os.Stdout, os.Stderr))
}
