"""What the service can take on: audio decoded and held at once (admission), the backlog and
each replica's measured speed, estimates from them, and which model pool takes a request."""
