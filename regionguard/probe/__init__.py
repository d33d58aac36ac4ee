"""Round-trip-time measurement: TCP connects to an address (regionguard probe, evidence.rtt: probe)."""
