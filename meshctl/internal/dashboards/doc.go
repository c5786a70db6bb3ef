// Package dashboards holds the test of deploy/observability: every query
// of the Grafana dashboard parses with Prometheus' own PromQL parser and
// names only metrics (and labels) that ztunnel and the waypoint export, as
// scraped from their real registries in a running local-mode mesh.
package dashboards
