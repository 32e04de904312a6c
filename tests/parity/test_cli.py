"""``python -m parity``: exit codes, JSON, plots, and the message when Keras is missing."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("keras")

from parity.__main__ import main  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--reference", "keras2"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["--no-such-option"])
    assert e.value.code == 2
    assert main(["-k", "no-case-has-this-name"]) == 2
    assert "matches no case" in capsys.readouterr().err


@pytest.mark.keras
def test_passing_case_exits_0_with_json_and_plots(tmp_path, capsys):
    out = tmp_path / "r.json"
    code = main(["--no-cache", "-k", "lstm/mixed/mse", "--json", str(out), "--plot", str(tmp_path)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "lstm/mixed/mse" in text and "parity OK: 1 checks" in text
    payload = json.loads(out.read_text())
    (report,) = payload["reports"]
    assert report["status"] == "pass" and report["reference"] == "keras3"
    assert report["valid_diff"] <= 1e-5 and report["masked_diff"] <= 1e-5
    assert payload["tolerances"]["outputs"] == {"atol": 1e-5, "rtol": 1e-5}
    assert (tmp_path / "outputs_lstm_mixed_mse_keras3.png").stat().st_size > 1000


@pytest.mark.keras
def test_perturbed_case_is_a_mismatch_and_exits_1(capsys):
    code = main(["--no-cache", "-k", "gru/mixed/mse", "--perturb", "1e-3"])
    text = capsys.readouterr().out
    assert code == 1
    assert "mismatch" in text and "parity FAILED" in text


@pytest.mark.keras
def test_documented_deviation_is_not_a_failure(capsys):
    assert main(["--no-cache", "-k", "loss/mse/gap/full_row"]) == 0
    text = capsys.readouterr().out
    assert "deviation: keras-gap-nan-fully-masked-row" in text and "upstream:" in text


def test_missing_keras_gives_a_clear_message():
    code = ("import sys; sys.modules['keras'] = None; sys.modules['tensorflow'] = None; "
            "from parity.__main__ import main; sys.exit(main(['--quick']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "needs keras and tensorflow, which are not installed" in proc.stderr
    assert "pip install" in proc.stderr


def test_cli_subprocess_usage_error():
    proc = subprocess.run([sys.executable, "-m", "parity", "--reference", "nope"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
