// Package tuning holds the kernel and ulimit guide (README.md in this
// folder) for running Surge with hundreds of thousands of connections.
package tuning
