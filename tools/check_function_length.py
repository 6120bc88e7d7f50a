#!/usr/bin/env python3
"""Lists C++ functions whose bodies run longer than a limit (default 80 lines).

Usage: tools/check_function_length.py [--limit N] [DIR_OR_FILE ...]
(default: every library folder: launch io eval model parallel runtime kernels optim data).

A brace-counting scan, not a parser: comments, string and character literals are blanked first;
then every `{` at the outermost level of a namespace (or of a class, struct or union body) whose
preceding text ends in `)` -- optionally followed by qualifiers such as const, noexcept,
override, a trailing return type or a constructor's initializer list -- opens a function body, and
its matching `}` closes it. Lambdas and local classes inside a function count toward that
function's lines; braced member initializers in a constructor's initializer list are skipped.
A body's length is its closing line minus its opening line plus one. Prints
`path:line name N lines` for each offender and exits 1 if there is any.
"""
import argparse
import os
import re
import sys

DEFAULT_DIRS = ["launch", "io", "eval", "model", "parallel", "runtime", "kernels", "optim", "data"]
EXTS = (".cpp", ".h", ".cc", ".hpp", ".cu", ".cuh")
SCOPE_RE = re.compile(r"\b(namespace|class|struct|union|enum)\b[^;(){}]*$")
CTOR_INIT_RE = re.compile(r"\)\s*(noexcept\s*)?:(?!:)")
KEYWORDS = {"if", "for", "while", "switch", "catch", "return", "sizeof", "decltype", "alignof"}


def blank_comments_and_strings(text):
    """Replaces comments and literals by spaces, keeping newlines (so line numbers hold)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append("".join(ch if ch == "\n" else " " for ch in text[i:j]))
            i = j
        elif c == 'R' and text.startswith('R"', i) and (i == 0 or not text[i - 1].isalnum()):
            m = re.match(r'R"([^(\s]*)\(', text[i:])
            if not m:
                out.append(c)
                i += 1
                continue
            end = text.find(")" + m.group(1) + '"', i)
            j = n if end < 0 else end + len(m.group(1)) + 2
            out.append('""' + "".join(ch if ch == "\n" else " " for ch in text[i + 2:j]))
            i = j
        elif c in "\"'":
            if c == "'" and i > 0 and text[i - 1].isalnum():  # digit separator 1'000
                out.append(" ")
                i += 1
                continue
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(c + " " * (j - i - 2) + c if j - i >= 2 else c)
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def function_name(head):
    """The name before the parameter list of a function head (the text before its `{`)."""
    head = re.sub(r"\s+", " ", head)
    # Drop a constructor's initializer list: `X::X(args) : a_(1), b_{2}`.
    depth = 0
    for k, ch in enumerate(head):
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == ":" and depth == 0 and head[k - 1:k] != ":" and head[k + 1:k + 2] != ":":
            head = head[:k]
            break
    # The name is the identifier before the first top-level parenthesis that closes the head.
    m = re.search(r"((?:[A-Za-z_~][\w]*::)*(?:operator\s*[^\s(]+|~?[A-Za-z_]\w*))\s*(?:<[^()]*>)?\s*\(", head)
    return m.group(1) if m else None


def scan(path, text):
    """Yields (line, name, length) for each function body in text."""
    src = blank_comments_and_strings(text)
    stack = []  # one entry per open brace: 'scope', 'func' or 'block'
    func_start = None
    func_name = None
    last_stmt = 0  # index just after the last `;`, `{` or `}` seen at this level
    line = 1
    for i, ch in enumerate(src):
        if ch == "\n":
            line += 1
        elif ch == "{":
            in_func = "func" in stack
            head = src[last_stmt:i]
            stripped = re.sub(r"\s+", " ", head).strip()
            if in_func:
                stack.append("block")
            elif (stack and stack[-1] == "init") or (CTOR_INIT_RE.search(stripped) and re.search(r"[\w>]$", stripped)):
                stack.append("init")  # a braced member initializer: x_{1} in `S() : x_{1} {`
                continue
            else:
                if SCOPE_RE.search(stripped) or stripped.endswith("=") or stripped == "" or \
                        stripped.startswith("extern"):
                    stack.append("scope" if SCOPE_RE.search(stripped) or stripped.startswith("extern")
                                 else "block")
                else:
                    name = function_name(stripped) if ")" in stripped else None
                    if name and name.split("::")[-1] not in KEYWORDS:
                        stack.append("func")
                        func_start, func_name = line, name
                    else:
                        stack.append("block")
            last_stmt = i + 1
        elif ch == "}":
            kind = stack.pop() if stack else "scope"
            if kind == "init":
                continue
            if kind == "func":
                yield func_start, func_name, line - func_start + 1
            last_stmt = i + 1
        elif ch == ";":
            last_stmt = i + 1
        elif ch == "#" and src[last_stmt:i].strip() == "":
            # A preprocessor line ends the previous statement's head.
            j = src.find("\n", i)
            last_stmt = (len(src) if j < 0 else j)


def files_under(paths):
    for p in paths:
        if os.path.isfile(p):
            yield p
            continue
        for root, _, names in os.walk(p):
            for nm in sorted(names):
                if nm.endswith(EXTS):
                    yield os.path.join(root, nm)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=80, help="longest body allowed, in lines (default 80)")
    ap.add_argument("paths", nargs="*", help="folders or files (default: the library folders)")
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = args.paths or [os.path.join(root, d) for d in DEFAULT_DIRS if os.path.isdir(os.path.join(root, d))]
    bad = 0
    for path in files_under(paths):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        shown = os.path.relpath(path) if not os.path.isabs(path) or path.startswith(os.getcwd()) else path
        for line, name, n in scan(path, text):
            if n > args.limit:
                print(f"{shown}:{line} {name} {n} lines")
                bad += 1
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
