"""The recipe is checked once, at load: every key of every section refuses a bad value with one
`error:` line naming section.key from `megactllm train --dry-run` (exit 2); old recipes load as the
new ones; docs/recipe.md is what `--help-config` prints.

    pytest -q tests/test_config_schema.py -k every_key -s    # prints "refused N of N bad values"
"""
import dataclasses
import typing
from pathlib import Path

import pytest

from megactllm.config import SECTIONS, ConfigError, Duration, load_config
from megactllm.config.section import Section

REPO = Path(__file__).resolve().parents[1]
OLD_RECIPES = REPO / "tests" / "fixtures" / "old_recipes"  # examples/configs as of 2c88b3a
BASE = ["model.arch=tiny", "train.duration=2 iterations", "run.check_memory=false"]


def _bad_values(section: str, f: dataclasses.Field, tp) -> list[str]:
    """Override texts (YAML) that the key must refuse: the wrong type, and each side of its range or choice."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        tp = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(tp), typing.get_args(tp)
    bad = []
    if origin is typing.Literal:
        bad += ["bogus", "[1]"]
    elif tp is bool:
        bad += ["maybe", "1"]
    elif tp in (int, float):
        bad.append("abc")
        if tp is int:
            bad.append("1.5")
        m = f.metadata
        if m["min"] is not None:
            bad.append(str(m["min"] - 1))
        if m["above"] is not None:
            bad.append(str(m["above"]))
        if m["max"] is not None:
            bad.append(str(m["max"] + 1))
        if m["below"] is not None:
            bad.append(str(m["below"]))
    elif tp is str:
        bad.append("{a: 1}")
    elif tp is list or origin is list:
        bad.append("5")
    elif tp is Duration:
        bad += ["5 fortnights", "0 iterations", "1.5 iterations", "5"]
    else:
        raise AssertionError(f"{section}.{f.name}: no bad value for type {tp}")
    return bad


def _every_bad_override() -> list[tuple[str, str]]:
    cases = []
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            for value in _bad_values(section, f, hints[f.name]):
                cases.append((f"{section}.{f.name}", f"{section}.{f.name}={value}"))
    # Relations between keys, one per check() in megactllm/config/schema.py.
    relations = {
        "train.global_batch_size": ["train.micro_batch_size=3", "train.global_batch_size=8"],
        "train.duration": ["train.duration=2 epochs"],
        "model.hidden_size": ["model.hidden_size=66"],
        "model.num_query_groups": ["model.num_query_groups=3"],
        "model.rope_scaling_factor": ["model.rope_scaling=llama3"],
        "parallel.sequence_parallel": ["parallel.sequence_parallel=true"],
        "parallel.virtual_pipeline_model_parallel_size": ["parallel.virtual_pipeline_model_parallel_size=2"],
        "parallel.recompute_method": ["parallel.recompute_method=uniform"],
        "parallel.tensor_model_parallel_size": ["parallel.tensor_model_parallel_size=3"],
        "parallel.pipeline_model_parallel_size": ["parallel.pipeline_model_parallel_size=3"],
        "model.seq_length": ["parallel.context_parallel_size=2", "model.seq_length=126"],
        "data.reset_position_ids": ["data.reset_position_ids=true"],
        "data.split": ["data.split=1,2,3,4"],
        "data.blend_schedule": ["train.stage=sft", "data.blend_schedule=[{name: a, blend: [x]}]"],
        "optim.fp16": ["optim.fp16=true", "optim.bf16=true"],
        "optim.min_lr": ["optim.min_lr=0.1"],
        "optim.lr_warmup_fraction": ["optim.lr_warmup_fraction=0.1", "optim.lr_warmup_iters=5"],
        "optim.lr_warmup_iters": ["optim.lr_warmup_iters=5"],
        "optim.lr_wsd_decay_iters": ["optim.lr_wsd_decay_iters=5"],
        "checkpoint.load": ["train.stage=dpo", "checkpoint.load=somewhere"],
        "stability.skip_samples": ["stability.skip_samples=[[5, 2]]"],
        "stability.spike_rollback_after": ["stability.spike_rollback_after=2"],
        "wandb.name": ["wandb.name=run"],
        "dpo.label_smoothing": ["dpo.loss_type=ipo", "dpo.label_smoothing=0.1"],
        "eval.interval": ["eval.interval=5"],
        "grpo.reward_weights": ["grpo.reward_weights=[1.0, 2.0]"],
        "grpo.rewards": ["grpo.rewards=[]"],
        "grpo.max_completion_tokens": ["train.stage=grpo", "data.prompts_path=p.jsonl", "grpo.max_completion_tokens=128"],
        "data.prompts_path": ["train.stage=grpo", "grpo.max_completion_tokens=8"],
        "eval.tasks": ["eval.tasks=[cmmlu, gsm8k]"],
    }
    for key, overrides in relations.items():
        cases.append((key, overrides))
    return cases


# The dry runs go through the real entry point in one child process: it imports torch and
# megatron-core and installs signal handlers, which a pytest process that later forks must not hold.
_DRIVER = r"""
import contextlib, io, json, sys
real = sys.stdout
from megactllm.training.main import main
import megactllm.training.run.preflight  # noqa: F401 (its imports' warnings before the first case)
results = []
for argv in json.load(sys.stdin):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    results.append([code, out.getvalue(), err.getvalue()])
real.write(json.dumps(results))
"""


def _dry_runs(cases: list[list[str]]) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of `megactllm train ARGS` for each case, in one child process."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    proc = subprocess.run([sys.executable, "-c", _DRIVER], input=json.dumps(cases), capture_output=True,
                          text=True, timeout=600, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [tuple(r) for r in json.loads(proc.stdout)]


def _dry_run(overrides: list[str]) -> tuple[int, str, str]:
    return _dry_runs([["--dry-run", *overrides]])[0]


def test_the_base_recipe_passes_the_dry_run():
    code, out, err = _dry_run(BASE)
    assert code == 0 and "schedule: stage pretrain, 2 iterations" in out, out + err


def test_every_key_refuses_a_bad_value_in_the_dry_run():
    cases = _every_bad_override()
    keys = {f"{s}.{f.name}" for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)}
    assert keys <= {key for key, _ in cases}
    refused = []
    runs = _dry_runs([["--dry-run", *BASE, *(o if isinstance(o, list) else [o])] for _, o in cases])
    for (key, override), (code, out, err) in zip(cases, runs):
        lines = [line for line in err.splitlines() if line.strip()]
        if code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and key in lines[0] \
                and "Traceback" not in out + err:
            refused.append(key)
        else:
            print(f"NOT REFUSED: {override}: exit {code}: {err.strip()[-300:]}")
    print(f"refused {len(refused)} of {len(cases)} bad values ({len(keys)} keys in {len(SECTIONS)} sections)")
    assert len(refused) == len(cases)


ISSUE_EXAMPLES = [
    ("train.stage=ppo", "train.stage='ppo': must be one of pretrain, sft, dpo"),
    ("optim.lr_decay_style=cosinee", "optim.lr_decay_style='cosinee': must be one of cosine"),
    ("optim.optimizer=adamw2", "optim.optimizer='adamw2': must be one of adam, sgd"),
    ("train.spike_window=-3", "stability.spike_window=-3: must be at least 2"),  # an old key, read as its new one
    ("model.seq_length=-5", "model.seq_length=-5: must be at least 1"),
    ("train.micro_batch_size=0", "train.micro_batch_size=0: must be at least 1"),
    ("model.arch=tinyy", "model.arch='tinyy': must be one of ctllm-2b"),
]


def test_the_issues_examples_are_one_error_line():
    runs = _dry_runs([["--dry-run", *BASE, override] for override, _ in ISSUE_EXAMPLES])
    for (override, message), (code, out, err) in zip(ISSUE_EXAMPLES, runs):
        assert code == 2 and err.strip() == f"error: {message}" or err.startswith(f"error: {message}"), err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("name", sorted(p.name for p in OLD_RECIPES.glob("*.yaml")))
def test_an_old_recipe_loads_as_its_new_version_with_one_note(name):
    old = load_config(str(OLD_RECIPES / name))
    new = load_config(str(REPO / "examples" / "configs" / name))
    assert old.to_dict() == new.to_dict()
    assert len(old.notes) == 1 and old.notes[0].startswith("note: the recipe uses old key names") and not new.notes


def test_old_overrides_map_and_replace_the_recipes_value():
    cfg = load_config(str(REPO / "examples" / "configs" / "tiny_cpu.yaml"), [
        "train.train_iters=70", "train.save=/tmp/x", "train.save_interval=3", "train.dpo_beta=0.1",
        "train.wandb_project=p"])
    assert str(cfg.train.duration) == "70 iterations" and cfg.checkpoint.save == "/tmp/x"
    assert cfg.checkpoint.interval == 3 and cfg.dpo.beta == 0.1 and cfg.wandb.project == "p"
    assert cfg.origin("checkpoint", "save") == "an override" and len(cfg.notes) == 1
    assert "train.save -> checkpoint.save" in cfg.notes[0]
    # The old precedence (iterations, then tokens, then epochs) stands in an old recipe, and is said.
    old = load_config(None, ["train.train_tokens=4096", "train.train_iters=3"])
    assert str(old.train.duration) == "3 iterations"
    with pytest.raises(ConfigError, match="both set: keep checkpoint.save"):
        from megactllm.config import config_from_dict

        config_from_dict({"train": {"save": "a"}, "checkpoint": {"save": "b"}})


def test_durations():
    assert str(Duration.parse("1254.68B tokens")) == "1254680000000 tokens"
    assert Duration.parse("2 epoch") == Duration(2.0, "epochs") and str(Duration.parse("0.5 epochs")) == "0.5 epochs"
    assert Duration.parse({"iterations": 10}) == Duration.parse("10 iters") == Duration.parse({"value": 10, "unit": "iterations"})
    assert str(Duration.parse("2 Tokens")) == "2 tokens"
    cfg = load_config(None, ["model.seq_length=128", "train.global_batch_size=8", "train.duration=2049 tokens"])
    assert cfg.known_train_iters() == 3  # ceil(2049 / (8 x 128))
    for bad in ("2b tokens", "1.5 iterations", "-1 epochs", "3 days", "tokens"):
        with pytest.raises(ValueError):
            Duration.parse(bad)


def test_every_key_is_documented_and_docs_recipe_md_is_current():
    from megactllm.config.reference import recipe_reference

    for name, cls in SECTIONS.items():
        assert issubclass(cls, Section) and cls.NAME == name and cls.__doc__
        assert all(f.metadata.get("doc") for f in dataclasses.fields(cls))
    text = recipe_reference()
    for name, cls in SECTIONS.items():
        assert all(f"`{name}.{f.name}`" in text for f in dataclasses.fields(cls))
    assert (REPO / "docs" / "recipe.md").read_text() == text, \
        "docs/recipe.md is stale: megactllm train --help-config > docs/recipe.md"


def test_help_config_prints_the_reference():
    code, out, err = _dry_runs([["--help-config"]])[0]
    assert code == 0, err
    assert "| `train.duration` | duration or null | `null` |" in out and "| `train.train_iters: N` |" in out


def test_the_recipes_stages_are_the_built_in_ones():
    from megactllm.config.schema import STAGES
    from megactllm.training.stages import _BUILTIN

    assert set(_BUILTIN) <= set(STAGES)


def test_the_recipes_families_are_the_implemented_ones():
    import typing

    from megactllm.config.model import Family
    from megactllm.model.families import FAMILIES

    assert set(typing.get_args(Family)) == set(FAMILIES)
