"""The one output filter (megactllm/output.py) holds third-party progress bars (transformers'
"Writing model shards", "Loading weights") and megatron-core's ShardedTensor FutureWarning;
--verbose shows them (issue 31)."""
import os
import subprocess
import sys

_SCRIPT = """
import sys, tempfile, warnings
from megactllm.output import configure_output
configure_output(verbose="--verbose" in sys.argv, rank=0, cuda=False)
import torch
from transformers import LlamaConfig, LlamaForCausalLM
model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1))
with tempfile.TemporaryDirectory() as tmp:
    model.save_pretrained(tmp)
    LlamaForCausalLM.from_pretrained(tmp)
# torch's own message, as megatron-core's dist checkpointing makes torch raise it
from torch.distributed._shard._utils import DEPRECATE_MSG
warnings.warn(DEPRECATE_MSG, FutureWarning)
print("done")
"""
NOISE = ("Writing model shards", "Loading weights", "deprecating ShardedTensor")


def _run(*args):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_DISABLE_PROGRESS_BARS", "MEGACTLLM_VERBOSE")}
    done = subprocess.run([sys.executable, "-c", _SCRIPT, *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and "done" in done.stdout, done.stderr[-2000:]
    return done.stderr


def test_third_party_bars_and_the_sharded_tensor_warning_are_held_and_verbose_shows_them():
    quiet, verbose = _run(), _run("--verbose")
    assert not [n for n in NOISE if n in quiet], quiet[-2000:]
    assert all(n in verbose for n in NOISE), verbose[-2000:]
