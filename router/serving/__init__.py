"""One call's way through its targets: the dispatcher, the NATS edge to nodes, liveness."""
