"""Chat data for SFT and DPO: records, chat tokenizing, indexed chat datasets, packing, mixtures."""
