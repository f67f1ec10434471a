"""The admin JSON-RPC 2.0 server on the Unix socket and its method groups, one module per noun."""
