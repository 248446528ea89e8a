"""Developer tools built on the node (top layer: they may import anything below)."""
