// Package topics holds the topic registry: subscriptions, per-topic sequence
// numbers and the fan-out of each published message, encoded once and
// shared by every subscriber's write queue.
//
// All methods of Registry are safe for concurrent use.
package topics
