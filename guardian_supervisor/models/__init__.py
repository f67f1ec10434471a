"""Who runs when and how: the scheduler (decisions), lifecycle (starting and stopping servers), per-model runtime state, the process launcher and argv."""
