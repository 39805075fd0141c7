"""Source-level guards: no shell strings, no unsafe deserialisation, anywhere in the project's code."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CODE = [p for d in ("pipeline", "stages", "facts", "media", "nets", "storage", "manifests", "sampledata", "training",
                    "benchmarks")
        for p in (REPO / d).rglob("*.py")]


def _calls(pattern: str) -> list[str]:
    rx = re.compile(pattern)
    return [f"{p.relative_to(REPO)}:{i}" for p in CODE
            for i, line in enumerate(p.read_text().splitlines(), 1) if rx.search(line.split("#")[0])]


def test_code_is_scanned():
    assert len(CODE) > 20


def test_no_shell_strings():
    assert _calls(r"shell\s*=\s*True|os\.system\(|os\.popen\(|subprocess\.getoutput") == []


def test_torch_load_only_with_weights_only():
    bad = [loc for loc in _calls(r"torch\.load\(") if "weights_only=True" not in
           (REPO / loc.split(":")[0]).read_text().splitlines()[int(loc.split(":")[1]) - 1]]
    assert bad == []


def test_yaml_and_pickle_are_never_loaded_unsafely():
    assert _calls(r"yaml\.load\(|yaml\.unsafe_load|pickle\.loads?\(|(?<![\w.])(eval|exec)\(") == []


def test_ffmpeg_and_ffprobe_are_started_only_by_the_media_module():
    """media/ffmpeg.py builds every command (ffmpeg-python) and starts it; a second place that spells out
    a command line would bypass its quoting, its bit-exact options and its error messages."""
    owner = "media/ffmpeg.py"
    starts = _calls(r"""\[\s*["'](ffmpeg|ffprobe)["']|require_tool\(\s*["'](ffmpeg|ffprobe)|ffmpeg\.(run|probe)\(""")
    assert [loc for loc in starts if not loc.startswith(owner)] == []
    assert any(loc.startswith(owner) for loc in starts)  # the pattern does see a start where there is one
