"""Time one command on two commits of this repo, alternately, on the same machine.

    python benchmarks/ab_commits.py --base 46b671c --rounds 2 -- \
        python -m slm_jax.main --gin_file=gin/demo.gin --gin.demo.work_dir=WORK

Each commit is checked out once into a fresh worktree (outside this checkout); the rounds
alternate base, head, base, head, ... so drift of a shared machine hits both alike. `WORK`
in the command becomes a fresh directory per run (no compilation cache or run state carries
over). Prints one JSON line per run (commit, round, wall seconds, the command's JSON output
lines and its last console line), then the head/base ratio of the median wall times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worktree(rev: str, root: str) -> str:
    path = os.path.join(root, rev.replace("/", "_"))
    subprocess.run(["git", "worktree", "add", "--detach", path, rev], cwd=REPO, check=True,
                   capture_output=True)
    return path


def run_once(tree: str, command: list[str], root: str) -> dict:
    work = tempfile.mkdtemp(dir=root, prefix="work-")
    argv = [arg.replace("WORK", work) for arg in command]
    start = time.perf_counter()
    proc = subprocess.run(argv, cwd=tree, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": tree})
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{argv} failed in {tree}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    lines = proc.stdout.strip().splitlines()
    return {"wall_s": round(wall, 2), "json": [json.loads(ln) for ln in lines
                                               if ln.startswith("{")],
            "last_line": lines[-1] if lines else ""}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="the commit to compare against")
    parser.add_argument("--head", default="HEAD")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    root = tempfile.mkdtemp(prefix="ab_commits-")
    trees = {"base": worktree(args.base, root), "head": worktree(args.head, root)}
    walls = {"base": [], "head": []}
    try:
        for i in range(args.rounds):
            for side in ("base", "head"):
                result = run_once(trees[side], command, root)
                walls[side].append(result["wall_s"])
                print(json.dumps({"commit": side, "round": i, **result}), flush=True)
    finally:
        for tree in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=REPO,
                           capture_output=True)
    ratio = statistics.median(walls["head"]) / statistics.median(walls["base"])
    print(json.dumps({"median_wall_s": {k: statistics.median(v) for k, v in walls.items()},
                      "head_over_base": round(ratio, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
