#!/usr/bin/env bash
# Builds the larder-py wheel a user installs: one manylinux_2_17 abi3 wheel (CPython
# 3.10+, glibc 2.17+, linked with zig so that the build host's glibc does not matter),
# stripped, with the package's metadata, then checks it (auditwheel's verdict, the tags,
# the metadata, no debug info) and prints its size.
#
#   python/build-wheel.sh                          # release wheel -> target/wheels/
#   python/build-wheel.sh --features crash-points  # test wheel -> target/wheels/crash-points/
#
# LARDER_WHEEL_FEATURES=crash-points does the same as --features. The tools (maturin,
# zig, auditwheel) are pinned below and installed into a virtual environment under
# target/ (made on first use, from $PYTHON or python3), never into the system's Python.
# The path of the wheel built is the last line of stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

features="${LARDER_WHEEL_FEATURES:-}"
while [ $# -gt 0 ]; do
    case "$1" in
        --features) features="${2:?--features needs a value}"; shift 2 ;;
        --features=*) features="${1#--features=}"; shift ;;
        -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-wheel.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$features" in
    ""|crash-points) ;;
    *) echo "build-wheel.sh: --features takes crash-points or nothing, not $features" >&2; exit 2 ;;
esac

target="${CARGO_TARGET_DIR:-target}"
tools="$target/venv-build"
if [ ! -x "$tools/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$tools"
fi
# The wheel's glibc floor: manylinux2014 (glibc 2.17, the oldest Rust's std supports).
manylinux=2_17
"$tools/bin/python" -m pip install -q \
    maturin==1.16.0 ziglang==0.17.1 auditwheel==6.8.2

out="$target/wheels"
args=(--release --zig --compatibility "manylinux_${manylinux}" --strip -m python/Cargo.toml)
if [ -n "$features" ]; then
    out="$out/$features"
    args+=(--features "$features")
fi
mkdir -p "$out"
rm -f "$out"/larder_py-*.whl
# maturin finds zig through the ziglang package of its own environment.
PATH="$(cd "$tools/bin" && pwd):$PATH" "$tools/bin/python" -m maturin build "${args[@]}" --out "$out" >&2

wheels=("$out"/larder_py-*.whl)
if [ "${#wheels[@]}" -ne 1 ] || [ ! -f "${wheels[0]}" ]; then
    echo "build-wheel.sh: expected one wheel in $out, found: ${wheels[*]}" >&2
    exit 1
fi
wheel="${wheels[0]}"

# The checks: the wheel a user gets must install on any glibc >= 2.17 x86_64 Linux
# and any CPython >= 3.10, and describe itself on PyPI.
"$tools/bin/python" - "$wheel" "$manylinux" >&2 <<'EOF'
import email
import os
import subprocess
import sys
import tempfile
import zipfile

wheel, manylinux = sys.argv[1], sys.argv[2]
name = os.path.basename(wheel)
problems = []
tag = f"manylinux_{manylinux}_x86_64"
if "-cp310-abi3-" not in name or tag not in name:
    problems.append(f"the file name {name} is not a cp310-abi3 {tag} wheel")

show = subprocess.run(
    [sys.executable, "-m", "auditwheel", "show", wheel],
    capture_output=True,
    text=True,
)
print(show.stdout.strip())
verdict = " ".join(show.stdout.split())
if show.returncode != 0 or f'platform tag: "{tag}"' not in verdict:
    problems.append(f"auditwheel does not find it consistent with {tag}: {show.stderr}")

with zipfile.ZipFile(wheel) as z:
    meta_name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    meta = email.message_from_bytes(z.read(meta_name))
    body = meta.get_payload()
    wheel_meta = z.read(meta_name.replace("METADATA", "WHEEL")).decode()
    entry_points = z.read(meta_name.replace("METADATA", "entry_points.txt")).decode()
    licenses = [n for n in z.namelist() if "/licenses/" in n]
    with tempfile.TemporaryDirectory() as d:
        sos = [n for n in z.namelist() if n.endswith(".so")]
        for so in sos:
            path = z.extract(so, d)
            sections = subprocess.run(
                ["readelf", "-S", "-W", path], capture_output=True, text=True, check=True
            ).stdout
            for section in (".debug_info", ".symtab"):
                if section in sections:
                    problems.append(f"{so} is not stripped: it has {section}")
if "Tag: cp310-abi3-" not in wheel_meta:
    problems.append(f"WHEEL does not tag it abi3:\n{wheel_meta}")
if not body or len(body) < 1000 or meta.get("Description-Content-Type") is None:
    problems.append("METADATA has no long description (the README)")
if not meta.get("Summary"):
    problems.append("METADATA has no Summary")
if meta.get("License-Expression") != "MIT" or not licenses:
    problems.append("METADATA has no MIT License-Expression or the wheel no LICENSE")
if len(meta.get_all("Classifier") or []) < 5:
    problems.append("METADATA has (almost) no classifiers")
if "larder=larder._cli:main" not in entry_points.replace(" ", ""):
    problems.append("the wheel has no `larder` console script")
size = os.path.getsize(wheel)
print(f"{name}: {size} bytes ({size / 2**20:.1f} MiB)")
if problems:
    print("build-wheel.sh: the wheel fails its checks:", file=sys.stderr)
    for p in problems:
        print(f"  - {p}", file=sys.stderr)
    sys.exit(1)
EOF
echo "$wheel"
