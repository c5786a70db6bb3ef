package main

// profileNotes is what the profiles showed when this harness was written;
// the raw profiles below are from the run that wrote this file.
const profileNotes = `Profiles are taken from each ztunnel's admin /debug/pprof/profile during a
mesh throughput run and a mesh saturation run (files in _out/bench/).
`

// optimisationNotes records data-path optimisations and their measured
// before/after ratios.
const optimisationNotes = `None measured with this harness yet.
`
