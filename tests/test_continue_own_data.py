"""Continuing pretraining on one's own data, as README section 5 says (issue 19, section 4).

examples/configs/llama2_7b_continue.yaml holds a data.blend_schedule. A data.data_path given on the
command line is the user's intent: it replaces the recipe's schedule, with one log line saying so.
Both on the command line (or both in one recipe) is one `error:` line before anything is built,
and the checks that follow (the 7B memory refusal) still run in the preflight.
"""
import shutil
import subprocess
import sys

import pytest
from convert_testing import REPO_ROOT, tiny_hf_llama, train_tiny_sentencepiece
from train_utils import torchrun_env

from megactllm.config import ConfigError, load_config
from megactllm.training.run.preflight import preflight

RECIPE = str(REPO_ROOT / "examples" / "configs" / "llama2_7b_continue.yaml")
MY_DATA = "data.data_path=[my_zh_text_document]"
MY_SCHEDULE = "data.blend_schedule=[{name: mine, blend: [my_zh_text_document]}]"


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    from megactllm.convert import import_from_hf

    root = tmp_path_factory.mktemp("continue")
    tiny_hf_llama(300).save_pretrained(root / "hf")
    train_tiny_sentencepiece(root / "hf" / "tokenizer.model", 300)
    return import_from_hf(root / "hf", root / "ckpt", progress_stream=None).checkpoint


def _start(imported, tmp_path):
    return [f"checkpoint.pretrained={imported}", f"checkpoint.load={tmp_path / 'none'}"]


def test_command_line_data_path_replaces_the_recipes_schedule_with_a_note(imported, tmp_path):
    cfg = load_config(RECIPE, _start(imported, tmp_path) + [MY_DATA])
    plan = preflight(cfg, world_size=4, check_memory=False)
    assert cfg.data.blend_schedule == [] and cfg.data.data_path == ["my_zh_text_document"]
    assert len(plan.notes) == 1 and "replaces the recipe's data.blend_schedule" in plan.notes[0]
    # Without an override the recipe's schedule stands (its phases are sized for 4,096-token samples), unnoted.
    cfg = load_config(RECIPE, _start(imported, tmp_path) + ["model.seq_length=4096"])
    assert not preflight(cfg, world_size=4, check_memory=False).notes and len(cfg.data.blend_schedule) == 3
    # A schedule on the command line replaces a recipe's data paths the same way.
    recipe = tmp_path / "paths.yaml"
    recipe.write_text("data:\n  data_path: [recipe_text_document]\n")
    cfg = load_config(str(recipe), _start(imported, tmp_path) + [MY_SCHEDULE, "train.duration=10 iterations"])
    notes = preflight(cfg, world_size=1, check_memory=False).notes
    assert cfg.data.data_path == [] and len(notes) == 1 and "replaces the recipe's data.data_path" in notes[0]


def test_both_from_the_same_place_is_one_error(imported, tmp_path):
    with pytest.raises(ConfigError, match=r"data.blend_schedule \(from an override\) and data.data_path "
                                          r"\(from an override\) both name the training data"):
        preflight(load_config(RECIPE, _start(imported, tmp_path) + [MY_DATA, MY_SCHEDULE]), world_size=4)
    # A tiny variant of the recipe that holds both.
    both = tmp_path / "both.yaml"
    both.write_text(open(RECIPE).read().replace("data:\n", "data:\n  data_path: [recipe_text_document]\n", 1))
    with pytest.raises(ConfigError, match=r"\(from the recipe\) and data.data_path \(from the recipe\)"):
        preflight(load_config(str(both), _start(imported, tmp_path)), world_size=4)


def test_a_schedule_that_cannot_run_is_refused_in_the_preflight(imported, tmp_path):
    from megactllm.errors import UserError

    with pytest.raises(UserError, match=r"data.blend_schedule\[0\] \(mine\) has no end"):
        preflight(load_config(RECIPE, _start(imported, tmp_path) + [
            "data.blend_schedule=[{name: mine, blend: [a]}, {name: next, blend: [b]}]"]), world_size=4,
            check_memory=False)
    with pytest.raises(ConfigError, match="read by stage pretrain only"):
        preflight(load_config(RECIPE, _start(imported, tmp_path) + ["train.stage=sft", "model.seq_length=4096"]), world_size=4,
                  check_memory=False)


def _train(args):
    """`python -m megactllm.train ARGS` as one process (the checks are the same on every rank)."""
    env = torchrun_env()
    env.pop("MEGACTLLM_VERBOSE", None)
    return subprocess.run([sys.executable, "-m", "megactllm.train", *args], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env, timeout=240)


def test_the_readme_command_reaches_the_memory_check_and_errors_in_one_line(tmp_path):
    """The 7B recipe with one's own data: the memory refusal shows (one line, exit 2), no traceback."""
    seven_b = ["model.arch=llama2-7b", "checkpoint.pretrained=null", f"checkpoint.load={tmp_path / 'none'}",
               "parallel.tensor_model_parallel_size=1", "parallel.pipeline_model_parallel_size=1",
               "parallel.sequence_parallel=false"]
    done = _train(["--config", RECIPE, *seven_b, MY_DATA])
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert done.returncode == 2, done.stdout
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "GiB" in errors[0] and "Traceback" not in done.stdout, done.stdout
    both = _train(["--config", RECIPE, *seven_b, MY_DATA, MY_SCHEDULE])
    errors = [line for line in both.stdout.splitlines() if line.startswith("error:")]
    assert both.returncode == 2 and len(errors) == 1 and "both name the training data" in errors[0], both.stdout
    assert "Traceback" not in both.stdout
    shutil.rmtree(tmp_path / "none", ignore_errors=True)
