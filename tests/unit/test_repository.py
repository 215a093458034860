"""The repository documents itself: references point inside it, links resolve, and every
benchmark module loads on its own (as a test file that imports one must pass alone)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".json", ".cfg", ".toml", ".txt", ".sh"}
# Background notes the project was planned from; they are not shipped, so nothing may point to them.
OUTSIDE_DOCUMENTS = re.compile(r"\b(METHOD|BENCHMARKS|ARCHITECTURE|ENVIRONMENT)(\.md)?\b section|"
                               r"\b(METHOD|BENCHMARKS|ARCHITECTURE|ENVIRONMENT)\.md\b|\.\./shared|/work/shared")
MARKDOWN_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
DOCS_MENTION = re.compile(r"\bdocs/[\w./-]+\.md")


SKIPPED_DIRS = {".git", ".venv", "outputs", "build", "dist", ".pytest_cache", ".torch_extensions", "__pycache__"}


def tracked_text_files():
    """The repository's own text files (git's list; without git, the tree minus build and run outputs)."""
    try:
        listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                                capture_output=True, text=True, check=True).stdout.split()
        paths = [REPO / name for name in listed]
    except (OSError, subprocess.CalledProcessError):
        paths = [path for path in REPO.rglob("*")
                 if not SKIPPED_DIRS & set(path.relative_to(REPO).parts) and ".egg-info" not in str(path)]
    return [path for path in paths if path.suffix in TEXT_SUFFIXES and path.is_file()]


def anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#+\s+(.*)$", markdown, flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_nothing_refers_to_documents_outside_the_repository():
    offenders = [f"{path.relative_to(REPO)}:{number}: {line.strip()}"
                 for path in tracked_text_files() if path.name != "test_repository.py"
                 for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1)
                 if OUTSIDE_DOCUMENTS.search(line)]
    assert not offenders, "\n".join(offenders)


def test_the_docs_folder_holds_the_method_and_the_benchmarks():
    for name in ("method.md", "benchmarks.md"):
        text = (REPO / "docs" / name).read_text()
        assert len(text.split()) > 300, name
    readme = (REPO / "README.md").read_text()
    assert "docs/method.md" in readme and "docs/benchmarks.md" in readme


def test_relative_links_and_docs_mentions_resolve():
    broken = []
    for path in tracked_text_files():
        text = path.read_text(errors="replace")
        targets = MARKDOWN_LINK.findall(text) if path.suffix == ".md" else []
        for target in targets:
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            linked = (path.parent / file_part).resolve() if file_part else path
            if not linked.exists():
                broken.append(f"{path.relative_to(REPO)}: {target} (no such file)")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked.read_text()):
                broken.append(f"{path.relative_to(REPO)}: {target} (no such heading)")
        for mention in DOCS_MENTION.findall(text):
            if not (REPO / mention).is_file():
                broken.append(f"{path.relative_to(REPO)}: {mention} (no such file)")
    assert not broken, "\n".join(broken)


def test_every_benchmark_module_loads_by_its_path_alone(tmp_path):
    """How the tests load a benchmark: by file path, with nothing else on sys.path."""
    scripts = sorted(str(path) for path in (REPO / "benchmarks").glob("bench_*.py"))
    assert len(scripts) >= 4
    loader = (
        "import importlib.util, sys\n"
        "for path in sys.argv[1:]:\n"
        "    name = path.rsplit('/', 1)[-1][:-3]\n"
        "    spec = importlib.util.spec_from_file_location(name, path)\n"
        "    module = importlib.util.module_from_spec(spec)\n"
        "    sys.modules[name] = module\n"
        "    spec.loader.exec_module(module)\n"
    )
    result = subprocess.run([sys.executable, "-c", loader, *scripts], cwd=tmp_path, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("module", ["ctxf/models/attention.py", "ctxf/models/wan.py", "ctxf/models/codec.py",
                                    "ctxf/parallel/collectives.py"])
def test_head_and_patch_layouts_are_written_with_einops(module):
    source = (REPO / module).read_text()
    assert "from einops import" in source and "rearrange(" in source
