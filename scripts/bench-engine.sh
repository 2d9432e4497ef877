#!/usr/bin/env bash
# Engine benchmark (not a timed test): `ballast-agent apply` over a generated
# workload of 2,000 files (small content, mode) and 200 symlinks under a temp
# root. Prints the median wall time and peak resident memory of the first run
# (fresh root each time) and of a no-change run.
#   scripts/bench-engine.sh [FILES] [SYMLINKS] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
files=${1:-2000} links=${2:-200} runs=${3:-11}
cargo build --release --locked -q -p ballast-agent
python3 - "$files" "$links" "$runs" target/release/ballast-agent <<'PY'
import os, statistics, subprocess, sys, tempfile, time, shutil
files, links, runs, agent = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
work = tempfile.mkdtemp(prefix="ballast-bench-")
spec = os.path.join(work, "bench.yaml")
with open(spec, "w") as f:
    f.write("roles:\n  bench:\n    directories:\n")
    for d in range(20):
        f.write(f'      - {{path: /srv/bench/d{d:02}, mode: "0755"}}\n')
    f.write("    files:\n")
    for i in range(files):
        f.write(f'      - {{path: /srv/bench/d{i % 20:02}/f{i:05}.conf, content: "setting_{i} = {i * 7}\\n", mode: "0644"}}\n')
    f.write("    symlinks:\n")
    for i in range(links):
        f.write(f'      - {{path: /srv/bench/d{i % 20:02}/l{i:05}, target: f{i:05}.conf}}\n')
    f.write("groups:\n  all: {roles: [bench]}\n")

def run(root, state):
    cmd = [agent, "apply", "-f", spec, "--root", root, "--state-dir", state, "--quiet", "--name", "bench"]
    # Flush earlier runs' writes so no run pays for another's.
    os.sync()
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    out = p.stdout.read().decode() + p.stderr.read().decode()
    if status != 0:
        sys.exit(f"agent failed: {out}")
    engine_ms = float(out.rsplit(" in ", 1)[1].split()[0])
    return wall, usage.ru_maxrss / 1024, out.strip(), engine_ms

first, first_mem, first_engine, nochange, nochange_mem, nochange_engine = [], [], [], [], [], []
for r in range(runs):
    root, state = tempfile.mkdtemp(dir=work), tempfile.mkdtemp(dir=work)
    w, m, out, e = run(root, state)
    first.append(w); first_mem.append(m); first_engine.append(e)
    if r == 0:
        print("first run:", out)
        w, m, out, e = run(root, state)
        print("no-change run:", out)
        for _ in range(runs):
            w, m, _, e = run(root, state)
            nochange.append(w); nochange_mem.append(m); nochange_engine.append(e)
    # Trees are deleted only at the end: on a disk mounted with `discard`,
    # a deletion makes the next commit pay for trimming its blocks.
n = files + links + 20
print(f"engine: {files} files + {links} symlinks + 20 directories ({n} resources), {runs} runs each, release build")
print(f"  first run:     median {statistics.median(first) * 1000:.1f} ms wall (engine {statistics.median(first_engine):.0f} ms), peak RSS {max(first_mem):.1f} MiB")
print(f"  no-change run: median {statistics.median(nochange) * 1000:.1f} ms wall (engine {statistics.median(nochange_engine):.0f} ms), peak RSS {max(nochange_mem):.1f} MiB")
shutil.rmtree(work)
PY
