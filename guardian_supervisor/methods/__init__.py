"""RPC method groups, one module per noun; `register_all` wires them explicitly."""
