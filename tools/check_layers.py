#!/usr/bin/env python3
"""The include layering of the library folders: a folder may include only itself and the folders
below it. core/ is the bottom (types, errors); kernels/ sits on core/ alone, so a backend never
sees tensors, arenas or anything above them.

Usage: check_layers.py [ROOT]       checks the tree at ROOT (default: the repository)
       check_layers.py --self-test  plants a violation in a temporary tree and sees it caught
Exit 0 when clean; 1 with one line per violation (file:line: what it includes)."""
import pathlib
import re
import sys
import tempfile

# Folder -> the folders it may include (besides itself).
ALLOWED = {
    "core": set(),
    "kernels": {"core"},
}
INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"/]+)/')


def violations(root):
    out = []
    for folder, allowed in ALLOWED.items():
        for f in sorted((root / folder).rglob("*")):
            if f.suffix not in {".h", ".cpp", ".cu", ".cuh"}:
                continue
            for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
                m = INCLUDE.match(line)
                if m and m.group(1) != folder and m.group(1) not in allowed:
                    out.append(f"{f.relative_to(root)}:{n}: {folder}/ includes {m.group(1)}/ "
                               f"(allowed: {', '.join(sorted(allowed | {folder}))})")
    return out


def self_test():
    with tempfile.TemporaryDirectory() as d:
        root = pathlib.Path(d)
        (root / "core").mkdir()
        (root / "kernels").mkdir()
        (root / "core" / "types.h").write_text('#pragma once\n#include <cstdint>\n')
        good = root / "kernels" / "k.h"
        good.write_text('#include "core/types.h"\n#include "kernels/other.h"\n')
        if violations(root):
            print("check_layers self-test: a clean tree was flagged", file=sys.stderr)
            return 1
        good.write_text('#include "core/types.h"\n#include "runtime/tensor.h"\n')
        v = violations(root)
        if len(v) != 1 or "kernels/ includes runtime/" not in v[0]:
            print("check_layers self-test: the planted include was not caught: %r" % v, file=sys.stderr)
            return 1
    print("check_layers self-test: a planted kernels/ -> runtime/ include is caught, a clean tree passes")
    return 0


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent)
    v = violations(root)
    for line in v:
        print(line)
    if not v:
        print("check_layers: core/ and kernels/ include nothing above them")
    return 1 if v else 0


if __name__ == "__main__":
    sys.exit(main())
