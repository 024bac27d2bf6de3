"""Training: one epoch loop for every fit, the checkpointer (last/best/RNG state, resume), the
epoch history and selection rule, data-parallel training under torchrun, and the context-head trainer."""
