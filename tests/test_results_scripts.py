"""The scripts that wrote data/results' records still run, and measure what their records say."""
import importlib.util
import json
from pathlib import Path

import torch

from armini import orders
from armini.models.lmconv import late_observed

RESULTS = Path(__file__).resolve().parent.parent / "data" / "results"


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, RESULTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lmconv_completion_trains_each_family_plain_and_observed_first():
    script = load_script("lmconv_completion")
    given = script.masks()
    assert torch.equal(given["centre missing"], ~given["centre given"]) and int(given["left half given"].sum()) == 98
    chosen = script.training_orders(["identity", "flip-lr"])  # (6, 196)
    assert chosen.shape == (6, 196)
    assert all(torch.equal(o.sort().values, torch.arange(196)) for o in chosen)  # permutations
    assert torch.equal(chosen[0], orders.named("s-curve", 14, 14, "identity"))
    assert torch.equal(chosen[1], orders.named("s-curve", 14, 14, "flip-lr"))
    for made, plain, name in [(2, 0, "left half given"), (3, 1, "left half given"), (4, 0, "centre given"),
                              (5, 1, "centre given")]:
        assert late_observed(given[name].flatten(), chosen[made]) == 0  # every observed pixel first
        assert late_observed(given[name].flatten(), chosen[plain]) > 0  # its plain S-curve is not


def test_lmconv_completion_runs_and_appends_its_records(tmp_path):
    script = load_script("lmconv_completion")
    out = tmp_path / "records.json"
    for _ in range(2):
        script.main(["--steps", "2", "--test-images", "4", "--runs", str(tmp_path / "runs"), "--json", str(out)])
    script.main(["--measure-only", "--test-from", "4", "--test-images", "4", "--runs", str(tmp_path / "runs"),
                 "--json", str(out)])  # the checkpoints of the second run, scored on 4 other test images
    records = json.loads(out.read_text())
    assert len(records) == 3 and records[0]["steps"] == 2 and records[0]["lmconv_train_orders"] == 6
    assert records[2]["measure_only"] and records[2]["cpu_s"] is None
    assert records[2]["steps"] == records[2]["schedule_steps"] == 2  # read from the checkpoints
    assert records[2]["test_from"] == 4 and records[2]["completion_bits_per_missing_dim"] != \
        records[1]["completion_bits_per_missing_dim"]  # other images, other numbers
    rows = records[0]["completion_bits_per_missing_dim"]
    assert set(rows) == {"left half given", "centre given", "centre missing"}
    assert rows["left half given"]["ensemble_orders"] == 2 and rows["centre missing"]["ensemble_orders"] == 1
    for row in rows.values():
        assert 0 < row["lmconv_ensemble"] < 9 and 0 < row["pixelcnn"] < 9  # bits per missing 8-bit dimension
        diff = row["ensemble_vs_pixelcnn"]["diff"]
        assert abs(diff - (row["lmconv_ensemble"] - row["pixelcnn"])) < 2e-3  # paired mean = difference of means
