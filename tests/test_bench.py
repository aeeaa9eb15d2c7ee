"""A small `capgap bench kd-loss` run: it completes and its printed figures parse and agree."""

import re

import pytest

from capgap import bench


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


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("sub", [["teacher-dtype", "--teacher-path", "t", "--data", "d"], ["distill"], ["eval"]])
def test_every_bench_refuses_device_cuda_without_cuda(sub):
    from capgap.errors import CapgapError

    with pytest.raises(CapgapError, match="no CUDA device is visible"):
        bench.main([*sub, "--device", "cuda"])
