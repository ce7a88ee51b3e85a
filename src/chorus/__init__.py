"""chorus: a fault-tolerant chat service whose servers replicate everything they store."""
