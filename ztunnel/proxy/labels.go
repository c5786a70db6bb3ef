package proxy

import (
	"github.com/ambient-go/mesh/pkg/state"
	"github.com/ambient-go/mesh/pkg/telemetry"
)

// setSource fills the source_* metric labels from the source workload.
func setSource(l *telemetry.Labels, w *state.Workload) {
	l.SourceWorkload = w.WorkloadName
	l.SourceWorkloadNamespace = w.Namespace
	l.SourceCanonicalService = w.CanonicalName
	l.SourceCanonicalRevision = w.CanonicalRevision
	l.SourceApp = w.CanonicalName
	l.SourceVersion = w.CanonicalRevision
	l.SourceCluster = w.ClusterId
}

// setDestination fills the destination_* workload labels.
func setDestination(l *telemetry.Labels, w *state.Workload) {
	l.DestinationWorkload = w.WorkloadName
	l.DestinationWorkloadNamespace = w.Namespace
	l.DestinationCanonicalService = w.CanonicalName
	l.DestinationCanonicalRevision = w.CanonicalRevision
	l.DestinationApp = w.CanonicalName
	l.DestinationVersion = w.CanonicalRevision
	l.DestinationCluster = w.ClusterId
}

// setService fills the destination_service* labels.
func setService(l *telemetry.Labels, s *state.Service) {
	l.DestinationService = s.Hostname
	l.DestinationServiceNamespace = s.Namespace
	l.DestinationServiceName = s.Name
}
