#!/usr/bin/env python3
"""Checks that the documentation names only places that exist (issue 31).

For README.md, docs/*.md, ARCHITECTURE.md, tests/README.md, BENCHMARKS.md and the READMEs of
examples/* and clients/*:

- every relative link or image (`[text](path)`, `[text](path#anchor)`, `[text](#anchor)`,
  `[ref]: path`) resolves to a file or directory, and its anchor to a heading of the target
  Markdown file, slugged as GitHub does (lowercase; punctuation other than `-` and `_` dropped;
  each space a `-`; a repeated heading gets `-1`, `-2`, …), or to an HTML `id`/`name`;
- every path named in backticks that looks like a repository path (it contains `/` or ends in a
  known extension, and its first segment exists at the repository root or next to the document)
  exists, relative to the repository root or to the document's directory. Globs (`tests/js/*.mjs`,
  `src/**`) must match something. Spans with whitespace or placeholders (`<x>`, `{id}`, `$VAR`,
  `…`) are commands or templates, not paths; `target/` and `node_modules/` are build output and
  are not checked (whether they exist depends on what was built).

Fenced code blocks are skipped: they hold commands and output, not references. Links with a
scheme (`https:`, `mailto:`) are not followed: this runs offline.

Prints each broken reference as `file:line: …` and exits 1; 0 when everything resolves.
Run from anywhere: `python3 tests/links.py`.
"""
import glob
import os
import re
import sys
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCUMENTS = [
    "README.md",
    "docs/*.md",
    "ARCHITECTURE.md",
    "tests/README.md",
    "BENCHMARKS.md",
    "examples/*/README.md",
    "clients/*/README.md",
]
# Extensions that make a slash-less backticked name a file name (`sidecar.toml`), not a word.
KNOWN_EXTENSIONS = (
    ".md", ".rs", ".toml", ".mjs", ".js", ".ts", ".tsx", ".json", ".yaml", ".yml", ".sh",
    ".py", ".conf", ".svg", ".lock", ".astro", ".txt",
)
# Generated directories: present or not depending on what was built, so never evidence.
GENERATED = {"target", "node_modules", ".git", "dist"}
PLACEHOLDER = re.compile(r"[<>{}$…]|\s")

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# A code span may wrap a line but not a paragraph: a stray backtick must not hide what follows.
CODE_SPAN = re.compile(r"(?<!`)(`+)(?!`)((?:(?!\n[ \t]*\n).)+?)(?<!`)\1(?!`)", re.S)
# [text](target "title") or ![alt](target); the text may hold one level of brackets and
# newlines (a link wrapped across lines).
INLINE_LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*(<[^>]*>|[^()\s]+)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(\S+)", re.M)
HTML_ATTR = re.compile(r"<(?:a|img|source)\b[^>]*?\b(?:href|src)\s*=\s*\"([^\"]+)\"", re.I)
HTML_ID = re.compile(r"<[a-z][^>]*?\b(?:id|name)\s*=\s*\"([^\"]+)\"", re.I)
ATX_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")


def blank_fences(text):
    """The text with every fenced code block's lines emptied (line numbers kept)."""
    out, fence = [], None
    for line in text.split("\n"):
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)[0] * len(m.group(1))
            out.append("")
        elif fence is not None:
            if line.strip().startswith(fence) and line.strip().strip(fence[0]) == "":
                fence = None
            out.append("")
        else:
            out.append(line)
    return "\n".join(out)


def slug(heading):
    """GitHub's anchor for a heading's Markdown text."""
    text = re.sub(r"!?\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\([^)]*\)", r"\1", heading)  # links → text
    text = re.sub(r"<[^>]+>", "", text)  # HTML tags
    text = text.replace("`", "").replace("*", "")
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


_anchors = {}


def anchors(path):
    """Every anchor a Markdown file defines (headings, with GitHub's -N for repeats; HTML ids)."""
    if path not in _anchors:
        with open(path, encoding="utf-8") as f:
            text = blank_fences(f.read())
        found, seen = set(), {}
        for line in text.split("\n"):
            m = ATX_HEADING.match(line)
            if m:
                base = slug(m.group(2))
                n = seen.get(base, 0)
                seen[base] = n + 1
                found.add(base if n == 0 else f"{base}-{n}")
        found.update(HTML_ID.findall(text))
        _anchors[path] = found
    return _anchors[path]


def line_of(text, offset):
    return text.count("\n", 0, offset) + 1


def check_link(doc, target):
    """None when `target` (as written in `doc`) resolves, else why not."""
    target = target.strip("<>")
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith("//"):
        return None  # external: not followed offline
    path_part, _, fragment = target.partition("#")
    path_part = urllib.parse.unquote(path_part.split("?", 1)[0])
    if path_part:
        base = ROOT if path_part.startswith("/") else os.path.dirname(doc)
        resolved = os.path.normpath(os.path.join(base, path_part.lstrip("/")))
        if not os.path.exists(resolved):
            return f"link to `{target}`: {os.path.relpath(resolved, ROOT)} does not exist"
    else:
        resolved = doc
    if fragment:
        if os.path.isdir(resolved) or not resolved.endswith(".md"):
            return None  # anchors of non-Markdown targets (source lines) are not headings
        fragment = urllib.parse.unquote(fragment).lower()
        if fragment not in anchors(resolved):
            return f"link to `{target}`: {os.path.relpath(resolved, ROOT)} has no heading with anchor #{fragment}"
    return None


def check_path(doc, span):
    """(whether the backticked `span` is a repository path, why it is broken or None)."""
    span = span.strip()
    if not span or PLACEHOLDER.search(span) or "://" in span:
        return False, None
    candidate = re.sub(r":\d+(-\d+)?$", "", span)  # src/x.rs:12
    if "/" not in candidate and not candidate.endswith(KNOWN_EXTENSIONS):
        return False, None
    here = os.path.dirname(doc)
    if candidate.startswith("../"):
        inside = os.path.relpath(os.path.normpath(os.path.join(here, candidate)), ROOT)
        if inside.split(os.sep, 1)[0] in GENERATED:
            return False, None
        bases = [here]
    elif candidate.startswith("./"):
        bases = [here, ROOT]  # `./examples/astro/demo.sh`, run from the repository root
    else:
        first = candidate.split("/", 1)[0]
        if not first or first in GENERATED:
            return False, None  # an absolute path (`/tmp/…`), a URL path, or build output
        bases = [ROOT, here]
        if not any(os.path.exists(os.path.join(b, first)) for b in bases):
            return False, None  # not a repository path: `/api/session`, a MIME type, …
    for b in bases:
        pattern = os.path.join(b, candidate)
        if glob.has_magic(candidate) and glob.glob(pattern, recursive=True):
            return True, None
        if os.path.exists(pattern):
            return True, None
    return True, f"`{span}` names a path that does not exist"


def main():
    documents = []
    for pattern in DOCUMENTS:
        matched = sorted(glob.glob(os.path.join(ROOT, pattern)))
        if not matched and not glob.has_magic(pattern):
            print(f"tests/links.py: {pattern} is missing", file=sys.stderr)
            return 1
        documents += matched
    problems, links, paths = [], 0, 0
    for doc in documents:
        with open(doc, encoding="utf-8") as f:
            text = blank_fences(f.read())
        name = os.path.relpath(doc, ROOT)
        spans = [(m.start(), m.end(), m.group(2)) for m in CODE_SPAN.finditer(text)]
        in_code = lambda pos: any(a <= pos < b for a, b, _ in spans)
        targets = [(m.start(), m.group(2)) for m in INLINE_LINK.finditer(text) if not in_code(m.start())]
        targets += [(m.start(1), m.group(1)) for m in REFERENCE_DEF.finditer(text)]
        targets += [(m.start(1), m.group(1)) for m in HTML_ATTR.finditer(text) if not in_code(m.start())]
        for pos, target in targets:
            links += 1
            why = check_link(doc, target)
            if why:
                problems.append(f"{name}:{line_of(text, pos)}: {why}")
        for start, _, span in spans:
            is_path, why = check_path(doc, span)
            paths += is_path
            if why:
                problems.append(f"{name}:{line_of(text, start)}: {why}")
    for p in problems:
        print(p)
    print(
        f"tests/links.py: {len(documents)} documents, {links} links, {paths} backticked paths: "
        f"{len(problems)} broken"
    )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
