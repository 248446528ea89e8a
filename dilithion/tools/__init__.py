"""Developer and operator tools built on the node (the differential harness, the
readiness lab); the top layer: they may import anything below."""
