// Package topics holds the topic registry: subscriptions, per-topic sequence
// numbers and the fan-out of each published message, encoded once and
// shared by every subscriber's write queue.
//
// Several nodes share topics through a Broker (NATSBroker across
// processes, MemoryBroker within one): Publish then goes through the broker,
// which assigns the seq, and every node encodes and fans out what the broker
// delivers (Registry.Deliver).
//
// All methods of Registry, MemoryBroker and NATSBroker are safe for
// concurrent use.
package topics
