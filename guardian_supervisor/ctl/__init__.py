"""guardianctl: a click CLI over the admin RPC, one module per command group."""
