#!/usr/bin/env python3
"""Runs every test and prints one closing line: "N passed, N failed".

Unit tests are the binaries built from tests/unit/test_*.c; integration tests are the
scripts tests/integration/test_*.py. Each prints "ok NAME", "FAIL NAME: why" or
"skip NAME: why" per test case; a program that dies without reporting counts as one
failure under its own name.
"""
import argparse
import glob
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fixtures_dir():
    env = os.environ.get("HW_FIXTURES")
    if env:
        return env
    return os.path.normpath(os.path.join(ROOT, "..", "shared", "fixtures"))


def run_one(name, argv, env, timeout):
    start = time.monotonic()
    passed = failed = skipped = 0
    try:
        proc = subprocess.run(argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, timeout=timeout)
        out, err, rc = proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace"), proc.returncode
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace")
        err = (e.stderr or b"").decode(errors="replace")
        rc = "timeout after %ds" % timeout
    for line in out.splitlines():
        if line.startswith("ok "):
            passed += 1
            print("  ok   %s/%s" % (name, line[3:]))
        elif line.startswith("FAIL "):
            failed += 1
            print("  FAIL %s/%s" % (name, line[5:]))
        elif line.startswith("skip "):
            skipped += 1
            print("  skip %s/%s" % (name, line[5:]))
    if rc != 0 and failed == 0:
        failed += 1
        print("  FAIL %s: exited with %s" % (name, rc))
    if failed:
        tail = "\n".join(err.splitlines()[-40:])
        if tail:
            print("    --- stderr of %s (last lines) ---\n%s" % (name, "\n".join("    " + l for l in tail.splitlines())))
    print("  (%s: %.1fs)" % (name, time.monotonic() - start))
    sys.stdout.flush()
    return passed, failed, skipped


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("only", nargs="*", help="run only tests whose file name contains one of these")
    args = ap.parse_args()
    build = os.path.join(ROOT, args.build)
    env = dict(os.environ)
    env["HW_BUILD"] = build
    env["HW_FIXTURES"] = fixtures_dir()
    env["PYTHONPATH"] = os.path.join(ROOT, "tests", "integration") + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")

    suites = []
    for path in sorted(glob.glob(os.path.join(build, "tests", "test_*"))):
        if os.access(path, os.X_OK) and not path.endswith(".d"):
            suites.append((os.path.basename(path), [path], 300))
    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "integration", "test_*.py"))):
        suites.append((os.path.basename(path)[:-3], [sys.executable, path], 900))
    if args.only:
        suites = [s for s in suites if any(o in s[0] for o in args.only)]

    total_p = total_f = total_s = 0
    for name, argv, timeout in suites:
        print("%s" % name)
        p, f, s = run_one(name, argv, env, timeout)
        total_p, total_f, total_s = total_p + p, total_f + f, total_s + s
    line = "%d passed, %d failed" % (total_p, total_f)
    if total_s:
        line += ", %d skipped" % total_s
    print(line)
    return 1 if total_f or total_p == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
