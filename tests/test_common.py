"""The ground floor: atomic writes, jsonl reading, the launcher's rank, recipes with overrides, progress."""
import io
import json
import os

import pytest

from megactllm.common.atomic import atomic_write, write_json_atomic
from megactllm.common.env import launch_local_rank, launch_rank, launch_world_size
from megactllm.common.jsonl import atomic_jsonl_writer, iter_jsonl, jsonl_lines
from megactllm.common.progress import Progress
from megactllm.common.recipe import RecipeError, load_recipe
from megactllm.errors import UserError


def test_atomic_write_replaces_whole_or_leaves_the_old_file(tmp_path):
    target = tmp_path / "sub" / "out.json"
    write_json_atomic(target, {"a": "中文"}, indent=1)
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": "中文"} and "中文" in target.read_text(encoding="utf-8")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write("half")
            raise RuntimeError("interrupted")
    assert json.loads(target.read_text(encoding="utf-8")) == {"a": "中文"}
    assert os.listdir(target.parent) == ["out.json"]  # no temporary file left behind
    with atomic_jsonl_writer(target) as out:
        out.write_json({"n": 1})
    assert target.read_text(encoding="utf-8") == '{"n": 1}\n'


def test_jsonl_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n[1]\n{bad\n', encoding="utf-8")
    assert [n for n, _ in jsonl_lines(path)] == [1, 3, 4]
    with pytest.raises(ValueError, match=r"x\.jsonl:3: expected a JSON object, got list; fix it"):
        list(iter_jsonl(path, objects_only=True, hint="; fix it"))

    class BadInput(UserError, ValueError):
        pass

    with pytest.raises(BadInput, match=r"x\.jsonl:4: not valid JSON"):
        list(iter_jsonl(path, error=BadInput))


def test_launch_rank_prefers_torchrun_then_slurm():
    assert (launch_rank({}), launch_world_size({}), launch_local_rank({})) == (0, 1, 0)
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1"}
    assert (launch_rank(slurm), launch_world_size(slurm), launch_local_rank(slurm)) == (5, 8, 1)
    both = dict(slurm, RANK="2", WORLD_SIZE="4", LOCAL_RANK="0")
    assert (launch_rank(both), launch_world_size(both), launch_local_rank(both)) == (2, 4, 0)
    assert launch_rank({"RANK": "", "SLURM_PROCID": "3"}) == 3


def test_recipe_overrides_parse_yaml_values_and_name_the_mistake(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("train:\n  lr: 1.0e-4\nempty:\n", encoding="utf-8")
    raw = load_recipe(str(path), ["train.iters=10", "empty.keys=[a, b]", "new.map={2: 0.3}"])
    assert raw == {"train": {"lr": 1e-4, "iters": 10}, "empty": {"keys": ["a", "b"]}, "new": {"map": {2: 0.3}}}
    with pytest.raises(RecipeError, match=r"override 'iters=10' must look like section.key=value, e.g. train.x=1"):
        load_recipe(None, ["iters=10"], example="train.x=1")
    with pytest.raises(RecipeError, match=r"unknown section 'trian'; sections: \['train'\]"):
        load_recipe(None, ["trian.iters=1"], sections=["train"])
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(str(tmp_path / "missing.yaml"))
    path.write_text("- a list\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="expected a mapping of sections, got list"):
        load_recipe(str(path))


class _Count(Progress):
    def line(self) -> str:
        return f"{self.done}/{self.total}"


def test_progress_paces_its_lines_and_reports_the_total():
    lines = []
    p = _Count(total=10, interval=3600, out=lines.append, at_total=True)
    p.advance(4)
    p.advance(6)
    assert lines == ["10/10"] and p.fraction() == 1.0
    stream = io.StringIO()
    first = _Count(total=None, interval=3600, out=stream, first_at_once=True)
    first.advance(1)
    first.advance(1)
    assert stream.getvalue() == "1/None\n" and first.eta_seconds() == float("inf")
    silent = _Count(total=1, interval=0, out=None)
    assert silent.advance(1) is True  # due, but nowhere to print
