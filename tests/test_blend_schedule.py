"""Blend schedules: parsing and errors, exact per-phase proportions, the boundary at the stated step,
phases in the log/metrics/PNG, the same samples at TP=2 / PP=2 / DP=2, and the resume check."""
import json
from collections import Counter

import numpy as np
import pytest
from blend_utils import scheduled_overrides, source_of, train_recording_samples, write_corpora

from megactllm.config import load_config
from megactllm.data.pretrain.blend_schedule import BlendSchedule, BlendScheduleError, check_resumed_schedule, parse_schedule
from megactllm.data.blend import BlendError
from megactllm.data.pretrain.indexed import DatasetFormatError
from megactllm.testing import run_distributed


def _schedule(raw, gbs=8, seq=32, iters=100):
    return BlendSchedule(parse_schedule(raw), gbs, seq, iters)


def test_iteration_and_token_ends_place_phases_on_step_boundaries():
    s = _schedule([
        {"end_iteration": 10, "blend": ["0.3", "p", "0.7", "z"]},
        # 8 x 32 = 256 tokens per step: 5000 tokens end at the first step reaching them, 20 (5120 tokens).
        {"name": "mid", "end_tokens": 5000, "blend": ["z"]},
        {"name": "decay", "blend": "0.5 z 0.5 hq"},
    ])
    assert [(r.start_iteration, r.end_iteration) for r in s.resolved] == [(0, 10), (10, 20), (20, 100)]
    assert s.sample_starts() == [0, 80, 160]
    assert s.prefixes == ["p", "z", "hq"]
    assert s.phase_at_iteration(10).phase.name == "phase1" and s.phase_at_iteration(11).phase.name == "mid"
    fields = s.log_fields(21)
    assert fields["blend_phase"] == 3 and fields["blend_weights"] == {"z": 0.5, "hq": 0.5}
    assert fields["blend_phase_start_tokens"] == 20 * 256
    assert "begins at iteration 11" in s.announcement(11, first_of_run=False)
    assert s.announcement(12, first_of_run=False) is None
    assert "continues at iteration 12" in s.announcement(12, first_of_run=True)
    # A short run of a long schedule stops inside a phase; the later ones are listed as not reached.
    short = _schedule([{"end_iteration": 10, "blend": ["p"]}, {"blend": ["z"]}], iters=6)
    assert [(r.start_iteration, r.end_iteration) for r in short.resolved] == [(0, 6)]
    assert "not reached" in short.table()


@pytest.mark.parametrize("raw, message", [
    ([], "non-empty list"),
    ([{"blend": ["0.3", "p", "0.7"]}], "odd count"),
    ([{"blend": ["p", "z"]}], "without weights"),
    ([{"blend": ["0", "p", "1", "z"]}], "weight 0"),
    ([{"blend": ["-1", "p", "2", "z"]}], "weights must be >= 0"),
    ([{"blend": ["0.5", "p", "0.5", "p"]}], "names a dataset twice"),
    ([{"blend": ["p"]}, {"blend": ["z"]}], r"data.blend_schedule\[0\] \(phase1\) has no end"),
    ([{"end_iteration": 5, "end_tokens": 9, "blend": ["p"]}, {"blend": ["z"]}], "both end_iteration and end_tokens"),
    ([{"end_iteration": 0, "blend": ["p"]}, {"blend": ["z"]}], "positive integer"),
    ([{"end_iteration": 5, "blend": ["p"]}, {"end_iteration": 5, "blend": ["z"]}], "ends must increase"),
    ([{"end_iteration": 5, "blend": ["p"]}, {"end_iteration": 50, "blend": ["z"]}], "ends at iteration 50 .* has 100"),
    ([{"end_iteration": 5, "weight": 1, "blend": ["p"]}, {"blend": ["z"]}], "unknown key"),
    ([{"name": "x", "end_iteration": 5, "blend": ["p"]}, {"name": "x", "blend": ["z"]}], "names repeat"),
    ([{"end_iteration": 5}, {"blend": ["z"]}], "has no blend"),
])
def test_bad_schedules_are_named_errors(raw, message):
    with pytest.raises(BlendError, match=message):
        _schedule(raw)


def test_missing_dataset_is_named_before_megatron_runs(tmp_path):
    from megactllm.data.pretrain.scheduled_blend import build_scheduled_gpt_datasets

    corpora = write_corpora(str(tmp_path))
    cfg = load_config(None, scheduled_overrides(corpora, str(tmp_path), 3))
    cfg.data.blend_schedule[1]["blend"][3] = str(tmp_path / "nowhere")
    schedule = BlendSchedule.from_config(cfg, 10)
    with pytest.raises(DatasetFormatError, match=r"data.blend_schedule\[1\] \(decay\): dataset prefix .*nowhere"):
        build_scheduled_gpt_datasets(cfg.data, schedule, 32, 1, 0)
    cfg.data.data_path = [corpora["a"]]
    with pytest.raises(ValueError, match="replaces data.data_path"):
        build_scheduled_gpt_datasets(cfg.data, schedule, 32, 1, 0)


def test_resume_check_refuses_a_changed_schedule_unless_allowed():
    a = _schedule([{"end_iteration": 10, "blend": ["0.3", "p", "0.7", "z"]}, {"blend": ["z"]}]).spec()
    same_when_scaled = _schedule([{"end_iteration": 10, "blend": ["3", "p", "7", "z"]}, {"blend": ["z"]}]).spec()
    moved = _schedule([{"end_iteration": 12, "blend": ["0.3", "p", "0.7", "z"]}, {"blend": ["z"]}]).spec()
    check_resumed_schedule(a, same_when_scaled, False, "ckpt", print)
    with pytest.raises(BlendScheduleError, match="phase 1: checkpoint .*'iteration': 10.* vs recipe .*'iteration': 12"):
        check_resumed_schedule(a, moved, False, "ckpt/iter_0000004", print)
    with pytest.raises(BlendScheduleError, match="fixed blend"):
        check_resumed_schedule(None, a, False, "ckpt", print)
    warnings = []
    check_resumed_schedule(a, moved, True, "ckpt", warnings.append)
    assert len(warnings) == 1 and "allow_blend_schedule_change" in warnings[0]


def _phase_samples(corpora, cache):
    """Rank body: 2 x 2000 samples of a two-phase schedule -> per-sample (dataset_id, source)."""
    from megactllm.data.pretrain.scheduled_blend import build_scheduled_gpt_datasets
    from megactllm.parallel import initialize_parallel

    cfg = load_config(None, scheduled_overrides(corpora, cache, 250) + ["data.split=100,0,0"])
    initialize_parallel(cfg.parallel, 1)
    schedule = BlendSchedule.from_config(cfg, 500)
    train, valid, _ = build_scheduled_gpt_datasets(cfg.data, schedule, 32, 1234, 0)
    rows = [(int(train[i]["dataset_id"]), source_of(train[i]["tokens"])) for i in range(len(train))]
    # A second build reads megatron's index cache instead of building again.
    again, _, _ = build_scheduled_gpt_datasets(cfg.data, schedule, 32, 1234, 0)
    same = all(np.array_equal(train[i]["tokens"], again[i]["tokens"]) for i in range(0, len(train), 97))
    # A one-dataset phase reads its window directly (no BlendedDataset); ids stay schedule-wide.
    cfg.data.blend_schedule = [{"end_iteration": 10, "blend": [corpora["c"]]},
                               {"blend": ["0.5", corpora["a"], "0.5", corpora["b"]]}]
    single, _, _ = build_scheduled_gpt_datasets(cfg.data, BlendSchedule.from_config(cfg, 20), 32, 1234, 0)
    single_rows = [(int(single[i]["dataset_id"]), source_of(single[i]["tokens"])) for i in range(len(single))]
    try:
        single[len(single)]
        out_of_range = False
    except IndexError:
        out_of_range = True
    return rows, schedule.prefixes, len(train), valid is None, same, single_rows, out_of_range


def test_each_phase_draws_its_exact_proportions(tmp_path):
    corpora = write_corpora(str(tmp_path))
    (rows, prefixes, n, no_valid, same, single_rows, out_of_range), = run_distributed(
        _phase_samples, 1, corpora, str(tmp_path), timeout=300)
    assert n == 4000 and no_valid and same and out_of_range
    assert single_rows[:80] == [(0, "c")] * 80
    assert {r for r in single_rows[80:]} == {(1, "a"), (2, "b")}
    names = {corpora[k]: k for k in corpora}
    assert [names[p] for p in prefixes] == ["a", "b", "c"]
    # dataset_id is the schedule-wide id, and the tokens really come from that dataset.
    assert all(names[prefixes[i]] == src for i, src in rows)
    for part, expected in ((rows[:2000], {"a": 0.3, "b": 0.7, "c": 0.0}), (rows[2000:], {"a": 0.25, "b": 0.5, "c": 0.25})):
        sources = [src for _, src in part]
        for name, share in expected.items():
            assert sources.count(name) / len(part) == pytest.approx(share, abs=0.01), (name, expected)
    # The boundary is sample 2000 exactly (iteration 250 x 8): the first step of phase 2 already holds c.
    assert "c" in [src for _, src in rows[2000:2008]]
    assert any((tmp_path / "data_cache").rglob("*BlendedDataset-train-dataset_index.npy"))


@pytest.fixture(scope="module")
def single_process_run(tmp_path_factory):
    """6 iterations, phase 'warm' for 1-3 and 'decay' for 4-6, in one process: the reference."""
    work = tmp_path_factory.mktemp("scheduled")
    corpora = write_corpora(str(work))
    overrides = scheduled_overrides(corpora, str(work / "run"), 3, **{"train.duration": "6 iterations"})
    (result,) = run_distributed(train_recording_samples, 1, overrides, str(work / "out.txt"), timeout=300)
    return work, corpora, result


def test_boundary_at_the_stated_step_and_phases_in_log_metrics_and_png(single_process_run):
    tmp_path, corpora, result = single_process_run
    steps = result["steps"]
    assert len(steps) == 6
    for i, step in enumerate(steps, start=1):
        sources = {src for _, src in step}
        assert sources <= ({"a", "b"} if i <= 3 else {"a", "b", "c"}), (i, sources)
    assert "c" in {src for step in steps[3:] for _, src in step}
    records = [json.loads(line) for line in open(tmp_path / "run" / "log" / "metrics.jsonl")]
    train = [r for r in records if r["kind"] == "train"]
    assert [r["blend_phase"] for r in train] == [1, 1, 1, 2, 2, 2]
    assert train[3]["blend_phase_name"] == "decay" and train[3]["blend_weights"][corpora["c"]] == 0.25
    out = (tmp_path / "out.txt").read_text()
    assert "blend phase 2/2 decay begins at iteration 4 (sample 24" in out
    assert "phase 1 warm (0.30 a, 0.70 b)" in out
    assert (tmp_path / "run" / "log" / "loss_curve.png").stat().st_size > 0


LAYOUTS = {
    "tp2": {"parallel.tensor_model_parallel_size": 2},
    "pp2": {"parallel.pipeline_model_parallel_size": 2},
    "dp2": {},
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_parallel_layouts_read_the_same_samples_as_one_process(single_process_run, layout):
    work, corpora, reference = single_process_run
    overrides = scheduled_overrides(corpora, str(work / layout), 3, **{"train.duration": "6 iterations", **LAYOUTS[layout]})
    results = run_distributed(train_recording_samples, 2, overrides, timeout=400)
    for step, expected in enumerate(reference["steps"]):
        expected = Counter(digest for digest, _ in expected)
        union = Counter()
        for rank, result in enumerate(results):
            read = Counter(digest for digest, _ in result["steps"][step])
            assert not read - expected, f"{layout} rank {rank} step {step + 1} read samples the single process did not"
            union |= read
        assert union == expected, f"{layout} step {step + 1}: the ranks together did not read the step's samples"
    if layout == "dp2":  # same weights as one process: the losses agree too
        for it, loss in reference["losses"].items():
            assert results[0]["losses"][it] == pytest.approx(loss, abs=1e-5)


def test_recipes_warm_start_and_decay_phase_line_up_with_the_wsd_decay():
    from pathlib import Path

    from megactllm.training.schedule import resolve_train_iters

    recipes = Path(__file__).resolve().parents[1] / "examples" / "configs"
    # The recipe has no model section: an imported LLaMA-2 checkpoint supplies seq_length 4096.
    cfg = load_config(str(recipes / "llama2_7b_continue.yaml"), ["model.seq_length=4096"])
    iters = resolve_train_iters(cfg)
    s = BlendSchedule.from_config(cfg, iters)
    warm, stable, decay = s.resolved
    assert any("parallel" in p for p in warm.phase.blend.prefixes)
    assert not any("parallel" in p for p in stable.phase.blend.prefixes + decay.phase.blend.prefixes)
    assert warm.end_iteration * cfg.train.global_batch_size * cfg.model.seq_length >= 10_000_000_000
    assert cfg.optim.lr_decay_style == "WSD" and decay.start_iteration == iters - cfg.optim.lr_wsd_decay_iters
    tiny = load_config(str(recipes / "tiny_blend_schedule.yaml"))
    t = BlendSchedule.from_config(tiny, tiny.known_train_iters())
    assert [(r.start_iteration, r.end_iteration) for r in t.resolved] == [(0, 30), (30, 70), (70, 100)]
    assert t.resolved[2].start_iteration == tiny.known_train_iters() - tiny.optim.lr_wsd_decay_iters
