"""The cluster: every node publishes its lives' deaths (and births) on NATS, keeps its
presence there, answers for its own lives, and learns every other node's (docs/cluster.md).

A layer between the domain (app/core) and the API: it imports core, never the API; the API
hands it what it needs to encode answers (app/api/cluster.py)."""
