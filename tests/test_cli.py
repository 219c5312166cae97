"""The `megactllm` command: every tools/*.py is a subcommand with the same main, `--help` lists
them, and every tool answers a user's mistake (an input that does not exist, a bad value) with one
`error: ...` line and exit code 2, while a bug keeps its traceback and exit code 1."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from megactllm.cli import COMMANDS, main as cli_main
from megactllm.common.command import entry_point

REPO = Path(__file__).resolve().parents[1]
TOOLS = sorted(p.stem for p in (REPO / "tools").glob("*.py"))


def _tool(name):
    spec = importlib.util.spec_from_file_location(f"tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _command_of(tool_name):
    main = _tool(tool_name).main
    found = [n for n, (module, function, _) in COMMANDS.items()
             if getattr(importlib.import_module(module), function) is main]
    assert len(found) == 1, (tool_name, found)
    return found[0]


def test_every_tool_is_a_subcommand_with_the_same_main():
    commands = {_command_of(tool) for tool in TOOLS}
    assert commands == set(COMMANDS) - {"train"}  # train is python -m megactllm.train (torchrun launches it)
    for tool in TOOLS:
        code = [line for line in (REPO / "tools" / f"{tool}.py").read_text().splitlines()
                if line.strip() and not line.startswith(("#", '"""'))]
        assert len(code) == 4, (tool, code)  # import sys, the import of main, the __main__ guard and its call


def test_help_lists_every_subcommand_on_one_line():
    proc = subprocess.run([sys.executable, "-m", "megactllm", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for name, (_, _, text) in COMMANDS.items():
        assert [line for line in proc.stdout.splitlines() if line.split()[:1] == [name]] == [f"  {name:<24}  {text}"]
    for name in ("clean", "tokenize", "train", "convert", "evaluate", "export-gguf", "serve", "full-path"):
        assert name in COMMANDS


def _one_error_line(capsys, *needles):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert str(needle) in lines[0], (needle, err)
    return lines[0]


def _missing_input_cases(tmp, sp_model):
    gone = tmp / "gone"
    prompts = tmp / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    return {
        "chat": [[f"{gone}.gguf"]],
        "clean_corpus": [[f"{gone}.yaml"]],
        "convert_checkpoint": [["export", gone, tmp / "hf"], ["import", gone, tmp / "ckpt"]],
        "evaluate": [["--model", gone, "--tasks", "cmmlu"]],
        "export_gguf": [[gone, tmp / "x.gguf"]],
        "full_path": [["--quick", "--out", tmp / "run", "--raw", f"{gone}.jsonl"]],
        "generate": [[f"{gone}.gguf", prompts, tmp / "out.jsonl"], [f"{gone}.gguf", f"{gone}.jsonl", tmp / "o.jsonl"]],
        "inspect_dataset": [[gone]],
        "merge_datasets": [["--input", gone, "--output-prefix", tmp / "merged"]],
        "precompute_dpo_reference": [["--config", f"{gone}.yaml", "--output", tmp / "ref.npz"]],
        "preprocess_data": [["--input", f"{gone}.jsonl", "--tokenizer-type", "sentencepiece", "--tokenizer-model",
                             sp_model, "--output-prefix", tmp / "out"],
                            ["--input", prompts, "--tokenizer-type", "sentencepiece", "--tokenizer-model",
                             f"{gone}.model", "--output-prefix", tmp / "out"]],
        "preprocess_dpo": [["--input", f"{gone}.json", "--output-prefix", tmp / "dpo", "--tokenizer-model", sp_model,
                            "--seq-length", "64"]],
        "preprocess_parallel": [["--input", f"{gone}.tsv", "--output", tmp / "p.jsonl"]],
        "preprocess_sft": [["--input", f"{gone}.json", "--output-prefix", tmp / "sft", "--tokenizer-model",
                            f"{gone}.model", "--seq-length", "64"]],
        "serve": [["--model", f"{gone}.gguf"]],
        "train_tokenizer": [["train", "--input", f"{gone}.jsonl", "--model-prefix", tmp / "tok"],
                            ["extend", "--model", f"{gone}.model"]],
        "verify_checkpoint": [["verify", gone], ["list", gone]],
    }


@pytest.mark.parametrize("tool", TOOLS)
def test_a_missing_input_is_one_error_line_and_exit_2(tool, tmp_path, sp_model_path, capsys):
    cases = _missing_input_cases(tmp_path, sp_model_path)
    assert set(cases) == set(TOOLS)
    main = _tool(tool).main
    for argv in cases[tool]:
        missing = [str(a) for a in argv if "gone" in str(a) and not Path(a).exists()]
        assert main([str(a) for a in argv]) == 2, argv
        line = _one_error_line(capsys)
        assert any(path in line for path in missing), (argv, line)


def test_bad_values_and_unknown_commands_are_one_line(tmp_path, capsys):
    from megactllm.data.pretrain.cli import tokenize_main

    assert tokenize_main(["--input", "x", "--tokenizer-type", "sentencepiece", "--tokenizer-model", "m",
                          "--output-prefix", "o", "--workers", "many"], prog="megactllm tokenize") == 2
    _one_error_line(capsys, "megactllm tokenize: argument --workers: invalid int value: 'many'")
    assert tokenize_main(["--input", "x"]) == 2
    _one_error_line(capsys, "the following arguments are required")
    assert cli_main(["tokenise"]) == 2
    _one_error_line(capsys, "unknown command 'tokenise'")


def test_a_bug_keeps_its_traceback(capsys):
    @entry_point
    def broken(argv, prog):
        raise KeyError("a bug, not a mistake")

    with pytest.raises(KeyError):
        broken([])


def test_the_console_command_exit_codes(tmp_path):
    """Through the real interpreter: `python -m megactllm` and tools/*.py exit 2 with one line;
    training's own entry point too; a bug exits 1 with its traceback."""
    gone = tmp_path / "gone.yaml"
    for cmd in ([sys.executable, "-m", "megactllm", "clean", str(gone)],
                [sys.executable, str(REPO / "tools" / "clean_corpus.py"), str(gone)],
                [sys.executable, "-m", "megactllm", "train", "--config", str(gone)]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
        assert proc.returncode == 2 and len(errors) == 1 and str(gone) in errors[0], (cmd, proc.stderr[-2000:])
        assert "Traceback" not in proc.stderr, proc.stderr
    bug = subprocess.run([sys.executable, "-c", "from megactllm.common.command import entry_point\n"
                          "import sys\nsys.exit(entry_point(lambda argv, prog: 1 / 0)())"],
                         capture_output=True, text=True, timeout=60)
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "ZeroDivisionError" in bug.stderr


# Stands in for an environment without the serve extra: its packages fail to import (issue 31).
_WITHOUT_SERVE_EXTRA = """
import sys
class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("fastapi", "uvicorn", "starlette", "llama_cpp"):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, _Missing())
from megactllm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_serve_help_works_without_the_serve_extra(tmp_path):
    """`megactllm serve --help` prints the help where the serve extra is missing; the missing-extra
    error (one line, exit 2) comes when the server is used."""
    def run(*args):
        return subprocess.run([sys.executable, "-c", _WITHOUT_SERVE_EXTRA, *args], capture_output=True, text=True,
                              timeout=300)

    helped = run("serve", "--help")
    assert helped.returncode == 0, helped.stderr
    assert "--max-queue" in helped.stdout and "OpenAI-compatible" in helped.stdout
    used = run("serve", "--model", str(tmp_path / "m.gguf"))
    assert used.returncode == 2
    assert used.stderr.strip().splitlines()[-1].startswith("error: ") and "fastapi" in used.stderr
    assert 'pip install -e ".[serve]"' in used.stderr and "Traceback" not in used.stderr
