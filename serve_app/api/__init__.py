"""HTTP edge: FastAPI routers by feature, built per Gateway replica by ``create_api``."""
