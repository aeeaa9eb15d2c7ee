"""A small `capgap bench kd-loss` run: it completes and its printed figures parse and agree."""

import re

import pytest

from capgap.commands import bench


def test_kd_loss_bench_prints_parsable_figures(capsys):
    assert bench.main(["kd-loss", "--vocab", "2048", "--tokens", "256", "--hidden", "32",
                       "--chunk", "64", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "vocab 2048, tokens 256" in text and "scaled down" in text and "memory:" in text
    rows = {m[1]: (float(m[2]), float(m[3]), float(m[4]))
            for m in re.finditer(r"^(naive|chunked)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", text, re.M)}
    assert set(rows) == {"naive", "chunked"}
    assert rows["naive"][2] == rows["chunked"][2]  # the same loss value, to the printed digits
    assert rows["naive"][0] > 0 and rows["chunked"][1] > 0
    ratio = float(re.search(r"chunked/naive peak: ([\d.]+)%", text)[1])
    # MiB printed to 0.1: at this toy size the ratio carries that rounding
    assert ratio == pytest.approx(100 * rows["chunked"][0] / rows["naive"][0], rel=0.03, abs=0.5)


def test_eval_bench_compares_chunked_and_naive_evaluation(capsys):
    assert bench.main(["eval", "--vocab", "4096", "--batch", "1", "--block", "256", "--hidden", "32",
                       "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "vocab 4096, 1 x 256 = 256 tokens" in text and "scaled down" in text
    rows = {m[1]: (float(m[2]), float(m[4]))
            for m in re.finditer(r"^(naive|chunked)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$", text, re.M)}
    assert rows["naive"][1] == rows["chunked"][1]  # the same held-out loss
    ratio = float(re.search(r"chunked/naive peak: ([\d.]+)%", text)[1])
    # MiB printed to 0.1: at this toy size the ratio carries that rounding
    assert ratio == pytest.approx(100 * rows["chunked"][0] / max(rows["naive"][0], 1e-9), rel=0.03)


def test_distill_bench_reports_both_loops_and_their_ratio(capsys):
    assert bench.main(["distill", "--teacher", "micro_xs", "--student", "100K", "--batch", "2", "--block", "32",
                       "--steps", "3", "--warmup", "1", "--repeats", "1", "--device", "cpu",
                       "--peak-tflops", "1"]) == 0
    text = capsys.readouterr().out
    rows = {m[1]: (float(m[2]), float(m[3]))
            for m in re.finditer(r"^(lightning|plain)\s+([\d.]+)\s+([\d.]+)%$", text, re.M)}
    assert set(rows) == {"lightning", "plain"} and all(t > 0 for t, _ in rows.values())
    ratio = float(re.search(r"capgap/plain: ([\d.]+)", text)[1])
    assert ratio == pytest.approx(rows["lightning"][0] / rows["plain"][0], abs=2e-3)
    flops = float(re.search(r"6·N_S \+ 2·N_T = ([\d.e+]+)", text)[1])
    assert rows["plain"][1] == pytest.approx(100 * rows["plain"][0] * flops / 1e12, abs=0.06)


def test_teacher_dtype_bench_reads_a_jsonl_corpus_as_data_local_does(tmp_path, capsys):
    from tiny_checkpoint import make_checkpoint, write_corpus

    teacher = make_checkpoint(tmp_path / "teacher")
    corpus = write_corpus(tmp_path / "corpus.jsonl", docs=40)
    assert bench.main(["teacher-dtype", "--teacher-path", str(teacher), "--data", str(corpus),
                       "--batches", "2", "--batch", "2", "--block", "32", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "2 x 2 x 32 tokens" in text and "device cpu, " in text
    fp32, bf16 = map(float, re.search(r"fp32 teacher ([\d.]+), with bf16 teacher ([\d.]+)", text).groups())
    assert fp32 > 0 and bf16 > 0


def test_teacher_dtype_bench_refuses_a_corpus_shorter_than_one_batch(tmp_path):
    from tiny_checkpoint import make_checkpoint

    from capgap.runtime.errors import CapgapError

    teacher = make_checkpoint(tmp_path / "teacher")
    (tmp_path / "short.txt").write_text("the law of capacity gap")
    with pytest.raises(CapgapError, match="fewer than one batch"):
        bench.main(["teacher-dtype", "--teacher-path", str(teacher), "--data", str(tmp_path / "short.txt"),
                    "--device", "cpu"])


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("sub", [["teacher-dtype", "--teacher-path", "t", "--data", "d"], ["distill"], ["eval"]])
def test_every_bench_refuses_device_cuda_without_cuda(sub):
    from capgap.runtime.errors import CapgapError

    with pytest.raises(CapgapError, match="no CUDA device is visible"):
        bench.main([*sub, "--device", "cuda"])
