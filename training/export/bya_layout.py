"""The folder layout the Bind-Your-Avatar trainer reads, and which clips of it are complete.

Their ``ConsisID_Dataset`` (``models/dataloader.py``) takes ``--instance_data_root``: a text file of lines
``sub_root,anno_json,anno_base`` (split on commas, so no path may hold one). ``anno_json`` is a JSON list of
clips ``{path, cap, fps, duration, speaker}``; a clip with ``fps * duration < 49`` is dropped; its video is
``{sub_root}/{basename(path)}.mp4`` and its name (the mp4's stem) keys everything under ``anno_base``::

    DEST/
      instance_data_root.txt                   # the one line: DEST/videos,DEST/anno.json,DEST/anno
      anno.json                                # every complete clip, sorted by name
      videos/{name}.mp4                        # our clip, 25 fps, as built
      anno/track_masks_data/{name}/
        valid_frame.json                       # {"1": {"face": [frames whose mask is not empty]}, "2": ...}
        corresponding_data.json                # {"1": {"face": 1}, "2": {"face": 2}}: character -> mask folder
        control_sam2_frame.json                # {"1": {"face": SAM2 prompt frame}, ...} (read, not used)
        tracking_mask_results/{1,2}/annotated_frame_{t:05d}.png   # uint16, the character id inside its mask
      anno/refine_bbox_jsons/{name}.json       # {"t": {"face": [{"box": {x1,y1,x2,y2}, "new_track_id": 1}, ...]}}
      anno/audio_emb/left_audio/{name}.pt      # float32 (T, 12, 768): the voice in slot 0
      anno/audio_emb/right_audio/{name}.pt     # float32 (T, 12, 768): the voice in slot 1
      entries/{name}.json                      # ours: the clip's anno entry + its files and sizes, written last
      export_report.json                       # ours: counts and every skipped clip with its reason

Character "1" is the left one (our character 0), "2" the right one; mask values are the ids, as their
SAM2 tool writes them. A clip is complete iff its ``entries/{name}.json`` exists, was made with the same
export options, and every file it lists is there with the size it records; everything else is redone.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# what their sft.sh trains with: 49 frames, 2 frames skipped at each end (which also leaves the two audio
# rows of context on each side), a face gap tolerance of 1 (consecutive frames)
SFT_FRAMES = 49
SFT_SKIP = 2
SFT_MISS_TOLERANCE = 1
IDS = ("1", "2")  # character 0 -> "1" (left), character 1 -> "2"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
ENTRY_VERSION = 1


class LayoutError(ValueError):
    pass


def check_name(name: str) -> str:
    """A clip name is a file stem in four folders: our keys are slugs, anything else is refused."""
    if not NAME_RE.match(name) or len(name) > 200:
        raise LayoutError(f"sample key {name!r} is not a safe file name (letters, digits, '_' and '-' only)")
    return name


@dataclass(frozen=True)
class BYAFolder:
    root: Path  # DEST, absolute

    @property
    def index(self) -> Path:
        return self.root / "instance_data_root.txt"

    @property
    def anno(self) -> Path:
        return self.root / "anno.json"

    @property
    def videos(self) -> Path:
        return self.root / "videos"

    @property
    def anno_base(self) -> Path:
        return self.root / "anno"

    @property
    def entries(self) -> Path:
        return self.root / "entries"

    @property
    def report(self) -> Path:
        return self.root / "export_report.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def dirs(self) -> list[Path]:
        a = self.anno_base
        return [self.videos, self.entries, a / "track_masks_data", a / "refine_bbox_jsons",
                a / "audio_emb" / "left_audio", a / "audio_emb" / "right_audio"]

    def video(self, name: str) -> Path:
        return self.videos / f"{name}.mp4"

    def track_dir(self, name: str) -> Path:
        return self.anno_base / "track_masks_data" / name

    def mask(self, name: str, ident: str, frame: int) -> Path:
        return self.track_dir(name) / "tracking_mask_results" / ident / f"annotated_frame_{frame:05d}.png"

    def bboxes(self, name: str) -> Path:
        return self.anno_base / "refine_bbox_jsons" / f"{name}.json"

    def audio(self, name: str, slot: int) -> Path:
        return self.anno_base / "audio_emb" / ("left_audio", "right_audio")[slot] / f"{name}.pt"

    def entry(self, name: str) -> Path:
        return self.entries / f"{name}.json"

    def clip_paths(self, name: str) -> list[Path]:
        """Everything of one clip outside its track folder (the folder goes as a whole)."""
        return [self.video(name), self.bboxes(name), self.audio(name, 0), self.audio(name, 1)]

    @staticmethod
    def temp(path: Path) -> Path:
        return path.with_name(f".{path.name}.tmp")

    def index_line(self, root: str | None = None) -> str:
        """``sub_root,anno_json,anno_base`` with DEST written as ``root`` (where the trainer will find it)."""
        base = (root or str(self.root)).rstrip("/")
        line = f"{base}/videos,{base}/anno.json,{base}/anno"
        if "," in base or "\n" in base or base != base.strip():
            raise LayoutError(f"the trainer splits {self.index.name} on commas and strips each line: the path "
                              f"{base!r} cannot be written there (choose a DEST / --index-root without commas, "
                              f"newlines or surrounding spaces)")
        return line


def write_atomic(path: Path, data: bytes) -> None:
    tmp = BYAFolder.temp(path)
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_if_changed(path: Path, data: bytes) -> bool:
    """``write_atomic`` unless the file already holds ``data`` (a rerun with nothing to do writes nothing)."""
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    write_atomic(path, data)
    return True


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n").encode()


def remove_clip(layout: BYAFolder, name: str) -> None:
    """Drop one clip, its entry first (so a crash in between never leaves an entry without its files)."""
    for p in (layout.entry(name), *layout.clip_paths(name)):
        for q in (p, layout.temp(p)):
            q.unlink(missing_ok=True)
    for d in (layout.track_dir(name), layout.temp(layout.track_dir(name))):
        if d.is_dir():
            shutil.rmtree(d)


def remove_temporaries(layout: BYAFolder) -> int:
    """Leftovers of a killed run: files and track folders under temporary names."""
    n = 0
    for d in [*layout.dirs(), layout.root]:
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if p.name.startswith(".") and p.name.endswith(".tmp"):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
                n += 1
    return n


def file_sizes(layout: BYAFolder, paths: Iterable[Path]) -> dict[str, int]:
    return {p.relative_to(layout.root).as_posix(): p.stat().st_size for p in paths}


def read_entry(layout: BYAFolder, name: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(layout.entry(name).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # unreadable (a torn write): the clip is redone
    return doc if isinstance(doc, dict) and doc.get("version") == ENTRY_VERSION else None


def is_complete(layout: BYAFolder, name: str, options: dict[str, Any] | None) -> bool:
    """The clip's entry exists (made with ``options``, unless None) and every file it lists has its size.
    One directory listing per folder, not one stat per mask frame."""
    doc = read_entry(layout, name)
    if doc is None or (options is not None and doc.get("options") != options):
        return False
    files = doc.get("files")
    if not isinstance(files, dict) or not files:
        return False
    by_dir: dict[str, dict[str, int]] = {}
    for rel, size in files.items():
        parent, _, base = rel.rpartition("/")
        by_dir.setdefault(parent, {})[base] = size
    for parent, want in by_dir.items():
        try:
            with os.scandir(layout.root / parent) as it:
                have = {e.name: e.stat().st_size for e in it if e.name in want}
        except (FileNotFoundError, NotADirectoryError):
            return False
        if have != want:
            return False
    return True
