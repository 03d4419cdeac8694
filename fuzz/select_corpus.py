#!/usr/bin/env python3
"""Cuts a fuzz corpus down to at most BUDGET files that keep the most edge coverage.

`cargo fuzz cmin` keeps every input that adds any feature, about a thousand for
`change_envelope`; most of them add a handful of edges. This keeps the seeds
(`seed-*`), then greedily the inputs that add the most edges not yet covered (smaller
first on ties), drops duplicate contents, and deletes the rest from the corpus directory.

Per-input edges come from a libFuzzer merge control file (`COV <index> <edges...>` lines).

Usage, from fuzz/ after building the target (`cargo +nightly fuzz build change_envelope`):
    TMPDIR=/dev/shm python3 select_corpus.py change_envelope 300
"""

import hashlib
import os
import subprocess
import sys
import tempfile


def main() -> None:
    target, budget = sys.argv[1], int(sys.argv[2])
    corpus = os.path.join("corpus", target)
    binary = os.path.join("target", "x86_64-unknown-linux-gnu", "release", target)
    with tempfile.TemporaryDirectory() as scratch:
        control = os.path.join(scratch, "control.txt")
        out = os.path.join(scratch, "out")
        os.mkdir(out)
        env = dict(os.environ, RUST_BACKTRACE="0")
        subprocess.run(
            [binary, "-merge=1", "-use_counters=0", "-rss_limit_mb=4096", f"-merge_control_file={control}", out, corpus],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        lines = open(control).read().split("\n")
    count = int(lines[0])
    files = lines[2 : 2 + count]
    edges = {i: set() for i in range(count)}
    for line in lines[2 + count :]:
        if line.startswith("COV "):
            parts = line.split()
            edges[int(parts[1])] = set(parts[2:])

    def content(i: int) -> str:
        with open(files[i], "rb") as f:
            return hashlib.sha1(f.read()).hexdigest()

    seeds = [i for i in range(count) if os.path.basename(files[i]).startswith("seed-")]
    seen = {content(i) for i in seeds}
    chosen, covered = list(seeds), set().union(*(edges[i] for i in seeds)) if seeds else set()
    candidates = [i for i in range(count) if i not in set(seeds)]
    unique = []
    for i in candidates:
        digest = content(i)
        if digest not in seen:
            seen.add(digest)
            unique.append(i)
    remaining = set(unique)
    while remaining and len(chosen) < budget:
        best = max(remaining, key=lambda i: (len(edges[i] - covered), -os.path.getsize(files[i])))
        if not edges[best] - covered:
            break
        chosen.append(best)
        covered |= edges[best]
        remaining.discard(best)
    total = set().union(*edges.values())
    keep = {files[i] for i in chosen}
    for path in files:
        if path not in keep:
            os.remove(path)
    size = sum(os.path.getsize(p) for p in keep)
    print(f"kept {len(keep)} of {count} files ({size} bytes), {len(covered)} of {len(total)} edges; {len(seeds)} seeds")


if __name__ == "__main__":
    main()
