// Package logsv1 is the generated Go code of the access-log streaming API
// (proto/logs.proto, package ambientgo.logs.v1): the LogStream service that
// proxies and istiod-lite's relay serve, and the LogRelay service that
// carries a proxy's stream back to istiod-lite. Regenerate with go generate
// (protoc, protoc-gen-go and protoc-gen-go-grpc on PATH; make tools).
package logsv1

//go:generate protoc -I ../proto --go_out=. --go_opt=module=github.com/ambient-go/mesh/pkg/logstream/logsv1 --go-grpc_out=. --go-grpc_opt=module=github.com/ambient-go/mesh/pkg/logstream/logsv1 logs.proto
