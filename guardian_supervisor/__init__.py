"""guardian-supervisor: the daemon that owns every llama-server, the memory budget and what
Guardian learns. Its folders are its parts:

- models/    who runs when and how a server is started (scheduler, lifecycle, runtime, launcher, argv)
- memory/    what fits where (GGUF reading, estimates, GPU inventory, placement, the planner)
- sessions/  KV-cache slots: carry-over across swaps and named sessions
- learning/  benchmark suite, maintenance window, request optimizer
- rpc/       the admin JSON-RPC server and one module per method group
- ctl/       guardianctl, one module per command group
"""
