package model

// buildWaypointAuthorizations translates the AuthorizationPolicies with
// targetRefs into Output.WaypointAuthorizations and their
// WaypointAccepted status conditions into Output.PolicyStatuses.
//
// TODO(issue 10): being written; until then no policy reaches waypoints.
func buildWaypointAuthorizations(in *Inputs, opt Options, out *Output, waypoints *waypointIndex) {}
