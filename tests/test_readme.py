"""The README's example runs as written and says what it claims."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs_and_masks_the_padding():
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    assert len(code.strip().splitlines()) <= 20
    scope = {}
    exec(compile(code, str(README), "exec"), scope)
    probs, mask, per_seq = np.asarray(scope["probs"]), np.asarray(scope["mask"]), scope["per_seq"]
    assert probs.shape == (3, 9, 1) and int(mask.sum()) == 17
    np.testing.assert_array_equal(mask.sum(1), [5, 9, 3])
    assert [p.shape for p in per_seq] == [(5, 1), (9, 1), (3, 1)]


def test_readme_commands_match_ci():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    install = re.search(r'pip install -e "\.\[dev,parity\]" && (python -m pytest)', text)
    assert install, "README must show the test command"
    assert 'pip install -q -e ".[dev,parity]"' in ci and "\npython -m pytest" in ci
    assert "python -m parity" in text
