"""``lewis monitor``: Prometheus ``/metrics``, a live dashboard at ``/`` and its WebSocket."""
