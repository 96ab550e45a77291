"""The worker's data plane: protocol, headers, forwarder with hooks, WebSocket relay, local
endpoints (evidence, receipts, ACME answers), the receipt tap, the governance gate and the
worker process itself. It never imports the control plane or the CLI."""
