"""A small `capgap bench kd-loss` run: it completes and its printed figures parse and agree."""

import re

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
    assert abs(ratio - 100 * rows["chunked"][0] / rows["naive"][0]) < 0.5
