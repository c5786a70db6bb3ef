package telemetry

import "github.com/ambient-go/mesh/pkg/state"

// SetSource fills the source_* labels from the source workload.
func (l *Labels) SetSource(w *state.Workload) {
	l.SourceWorkload = w.WorkloadName
	l.SourceWorkloadNamespace = w.Namespace
	l.SourceCanonicalService = w.CanonicalName
	l.SourceCanonicalRevision = w.CanonicalRevision
	l.SourceApp = w.CanonicalName
	l.SourceVersion = w.CanonicalRevision
	l.SourceCluster = w.ClusterId
}

// SetDestination fills the destination_* workload labels.
func (l *Labels) SetDestination(w *state.Workload) {
	l.DestinationWorkload = w.WorkloadName
	l.DestinationWorkloadNamespace = w.Namespace
	l.DestinationCanonicalService = w.CanonicalName
	l.DestinationCanonicalRevision = w.CanonicalRevision
	l.DestinationApp = w.CanonicalName
	l.DestinationVersion = w.CanonicalRevision
	l.DestinationCluster = w.ClusterId
}

// SetService fills the destination_service* labels.
func (l *Labels) SetService(s *state.Service) {
	l.DestinationService = s.Hostname
	l.DestinationServiceNamespace = s.Namespace
	l.DestinationServiceName = s.Name
}
