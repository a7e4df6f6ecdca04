"""The lock service: protocol, shards, deadlock probes, clients, LocalCluster."""
