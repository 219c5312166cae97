"""Training data: data/pretrain for corpus tokens and blends, data/chat for SFT and DPO records."""
