"""Ray Serve edges: thin deployments around the plain-Python core."""
