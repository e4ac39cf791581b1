#!/usr/bin/env python3
"""Checks the module graph of src/: no import cycles between files, and no import that runs
up the layer order ARCHITECTURE.md declares.

An edge A -> B is a `crate::…` or `super::…` path in A's code (comments and strings left out)
that names an item of file B. Layers are read from the table in ARCHITECTURE.md between the
`<!-- layers -->` markers: one row per layer, lowest first, modules as `name` or `dir/`.
"""
import os, re, sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src")

def files():
    for d, _, fs in os.walk(SRC):
        for f in fs:
            if f.endswith(".rs"):
                yield os.path.relpath(os.path.join(d, f), SRC)

def module_path(rel):
    """src/realtime/hub.rs -> ['realtime','hub']; src/realtime/mod.rs -> ['realtime']."""
    parts = rel[:-3].split(os.sep)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return parts

def strip(code):
    """The code without comments and string contents (one pass, so a quote in a comment or
    `//` in a string cannot confuse it)."""
    out, i, n = [], 0, len(code)
    while i < n:
        c = code[i]
        if code.startswith("//", i):
            j = code.find("\n", i)
            i = n if j < 0 else j
        elif code.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if code.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif code.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif c == "r" and re.match(r'r#*"', code[i:i + 260]) and not (i and (code[i - 1].isalnum() or code[i - 1] == "_")):
            hashes = re.match(r'r(#*)"', code[i:]).group(1)
            end = code.find('"' + hashes, i + 2 + len(hashes))
            out.append('""')
            i = n if end < 0 else end + 1 + len(hashes)
        elif c == '"':
            i += 1
            while i < n and code[i] != '"':
                i += 2 if code[i] == "\\" else 1
            out.append('""')
            i += 1
        elif c == "'" and (char := re.match(r"'(\\.|[^'\\])'", code[i:i + 4])):
            i += char.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)

def main():
    rels = sorted(files())
    by_path = {tuple(module_path(r)): r for r in rels if not r.endswith("main.rs")}
    def resolve(segs):
        for n in range(len(segs), 0, -1):
            if tuple(segs[:n]) in by_path:
                return by_path[tuple(segs[:n])]
        return None
    edges = {}
    for rel in rels:
        if rel == "main.rs":
            continue
        here = module_path(rel)
        # A file's own module for super:: — mod.rs is its directory's module.
        code = strip(open(os.path.join(SRC, rel), encoding="utf-8").read())
        code = re.sub(r"#\[cfg\(test\)\]\s*mod tests\s*\{.*", "", code, flags=re.S)
        targets = set()
        # A parent's paths into its own children (`mod hub;` … `hub::Hub`, `pub use hub::…`).
        own = module_path(rel) if rel.endswith(("mod.rs", "lib.rs")) else None
        if own is not None:
            for child in re.findall(r"^\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+(\w+)\s*;", code, re.M):
                if re.search(r"(?<![:\w])" + child + r"::", code):
                    t = resolve(own + [child])
                    if t:
                        targets.add(t)
        # `use a::{b, c::{d}}` trees: expand one level of braces, enough for this code.
        for m in re.finditer(r"\b(crate|super)((?:::\w+)+)(::\{([^{}]*(?:\{[^{}]*\}[^{}]*)*)\})?", code):
            base = m.group(1)
            segs = [s for s in m.group(2).split("::") if s]
            start = [] if base == "crate" else here[:-1]
            names = [segs]
            if m.group(4):
                names = []
                for item in re.split(r",(?![^{]*\})", m.group(4)):
                    item = item.strip().split(" as ")[0]
                    if item:
                        names.append(segs + [s for s in re.split(r"::", item.split("{")[0]) if s])
            for n in names:
                t = resolve(start + n)
                if t and t != rel:
                    targets.add(t)
        edges[rel] = targets
    # Cycles: strongly connected components (Tarjan).
    index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
    sys.setrecursionlimit(10000)
    def visit(v):
        index[v] = low[v] = counter[0]; counter[0] += 1
        stack.append(v); on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w); low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop(); on.discard(w); comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))
    for v in edges:
        if v not in index:
            visit(v)
    # Layers.
    layer_of = {}
    arch = os.path.join(ROOT, "ARCHITECTURE.md")
    if os.path.exists(arch):
        text = open(arch, encoding="utf-8").read()
        m = re.search(r"<!-- layers -->(.*?)<!-- /layers -->", text, re.S)
        rows = [r for r in (m.group(1) if m else "").splitlines() if r.startswith("|")]
        level = 0
        for row in rows:
            mods = re.findall(r"`([\w/]+)`", row)
            if not mods:
                continue
            for mod in mods:
                layer_of[mod.rstrip("/")] = level
            level += 1
    def layer(rel):
        segs = module_path(rel)
        return layer_of.get(segs[0] if segs else "lib")
    up = []
    if layer_of:
        for a, ts in edges.items():
            for b in ts:
                la, lb = layer(a), layer(b)
                if la is None or lb is None:
                    continue
                if lb > la:
                    up.append((a, b))
        missing = sorted({(module_path(r) or ["lib"])[0] for r in edges} - set(layer_of))
    else:
        missing = ["(no layer table in ARCHITECTURE.md)"]
    ok = True
    for c in sccs:
        ok = False
        print("import cycle: " + " <-> ".join(c))
    for a, b in sorted(up):
        ok = False
        print(f"import against the layer order: {a} -> {b}")
    for mod in missing:
        ok = False
        print(f"module without a layer in ARCHITECTURE.md: {mod}")
    print(f"{len(edges)} files, {sum(len(t) for t in edges.values())} imports, "
          f"{len(sccs)} cycles, {len(up)} upward imports")
    return 0 if ok else 1

if __name__ == "__main__":
    sys.exit(main())
