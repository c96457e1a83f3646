"""The README opens with the two commands; CI runs the second one."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bash_blocks():
    return re.findall(r"^```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S | re.M)


def test_readme_opens_with_demo_and_test_commands():
    demo, tests = bash_blocks()[:2]
    assert demo.endswith("pip install . && pixelflowsom demo")
    assert 'pip install ".[test]"' in tests
    assert tests.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "block == 2" in ci
    assert 'eval "$test_command"' in ci
