"""The GitHub Actions workflow validates against GitHub's published schema
(check-jsonschema's vendored copy, offline), and runs what .ci/run runs."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"


def validate(path):
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                           "vendor.github-workflows", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_the_workflow_validates_against_githubs_schema():
    p = validate(WORKFLOW)
    assert p.returncode == 0, p.stdout + p.stderr


def test_the_schema_check_rejects_a_broken_workflow(tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  tests:\n    runs-on: ubuntu-latest\n    steps: run pytest\n")
    assert validate(broken).returncode != 0


def test_the_workflow_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    command = readme.split("Set up and run the tests")[1].split("```bash\n")[1].split("\n")[0]
    flat = " ".join(WORKFLOW.read_text().split())
    assert " ".join(command.split()) in flat
    assert command in (ROOT / ".ci" / "run").read_text()


@pytest.mark.parametrize("needle", ["asv continuous", "--factor"])
def test_the_workflow_compares_base_and_head_with_asv(needle):
    assert needle in WORKFLOW.read_text()
