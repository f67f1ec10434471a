"""What fits where: GGUF metadata, memory estimates, the GPU inventory, pure placement and the planner that joins them."""
