"""The domain: lives, the tracker that fuses observations, the registry, the journal."""
