"""The on-disk checkpoint format, below training/, convert/ and eval/ which all read it.

save_load.py: megatron-core dist_checkpointing save/load, metadata, resharding to any layout;
async_save.py: saves that overlap training; extra_state.py: RNG, data position and the rest of
the run's state beside the weights; shape.py: a recipe's model section filled from a checkpoint.
"""
