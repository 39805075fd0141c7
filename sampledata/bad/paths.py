"""Cases about how a file is named and reached: permissions, a file listed several times, symlinks,
names that are data (shell syntax, quotes, a leading dash, Unicode, a newline, bytes that are not UTF-8)
and what the plan decides about copies."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .case import KEPT, UNREADABLE, Plan, rejected, vid
from .encode import remux


def add_paths(plan: Plan) -> None:
    case, after, root, base, v = plan.case, plan.after, plan.root, plan.base, plan.videos
    case("permission_000", vid("permission_000.mp4"),
         {"if_root": KEPT, "if_not_root": UNREADABLE},
         "mode 000: root reads it anyway (a valid video, kept); anyone else gets `unreadable`",
         lambda: remux(base, v / "permission_000.mp4", "perm"))
    after.append(lambda: os.chmod(v / "permission_000.mp4", 0))
    case("listed_twice", vid("listed_twice.mp4"), KEPT,
         "listed three times (as is, with ./ and with a doubled /): planned once, one row",
         lambda: remux(base, v / "listed_twice.mp4", "twice"))
    case("symlink_outside", vid("symlink_outside.mp4"), KEPT,
         "a symlink to a video outside every input (store/): processed under the link's path",
         lambda: remux(base, root / "store" / "linked_target.mp4", "outside"))
    after.append(lambda: os.symlink(Path("..") / "store" / "linked_target.mp4", v / "symlink_outside.mp4"))

    # --- names: a name is data, never code or options; each is a valid video that must be kept ---------
    names = {
        "name_shell_substitution": "name_$(touch x)_`touch x`.mp4",
        "name_semicolon_pipe_glob": "name_;_echo_x_|_*_?_[ab].mp4",
        "name_quotes": "name_'single'_\"double\".mp4",
        "name_leading_dash": "-name_leading_dash.mp4",
        "name_unicode": "name_café_日本語_😀.mp4",
    }
    for cname, fname in names.items():
        tmp = v / f".tmp_{cname}.mp4"
        case(cname, vid(fname), KEPT, f"file name {fname!r}: argument lists and file: inputs only",
             lambda tmp=tmp, cname=cname: remux(base, tmp, cname))
        after.append(lambda tmp=tmp, fname=fname: os.rename(tmp, v / fname))
    odd = root / "odd_names"
    newline_name = "name_new\nline.mp4"
    case("name_newline", f"odd_names/{newline_name}", KEPT,
         "a newline in the name (a one-path-per-line list cannot name it: reached by the folder input)",
         lambda: remux(base, odd / ".tmp_newline.mp4", "newline"), listed=False)
    after.append(lambda: os.rename(odd / ".tmp_newline.mp4", odd / newline_name))
    non_utf8 = os.fsdecode(b"name_latin1_caf\xe9.mp4")
    case("name_not_utf8", f"odd_names/{non_utf8}", UNREADABLE,
         "a name with a byte that is not UTF-8 (Latin-1 e-acute): manifests hold UTF-8 text, so the file "
         "gets an `unreadable` row that says to rename it",
         lambda: remux(base, odd / ".tmp_latin1.mp4", "latin1"), listed=False)
    after.append(lambda: os.rename(odd / ".tmp_latin1.mp4", odd / non_utf8))

    # --- what the plan decides -------------------------------------------------------------------------
    case("duplicate_copy", vid("zz_duplicate_of_reference.mp4"), rejected("duplicate", "plan"),
         "a byte copy of reference.mp4 at another path: planned once, the copy gets a `duplicate` row")
    after.append(lambda: shutil.copyfile(base, v / "zz_duplicate_of_reference.mp4"))
    case("symlink_to_listed", vid("symlink_to_listed.mp4"), KEPT,
         "a symlink to reference.mp4, both listed: the same file, planned once (as reference.mp4)",
         row="merged", same_as=vid("reference.mp4"))
    after.append(lambda: os.symlink("reference.mp4", v / "symlink_to_listed.mp4"))
