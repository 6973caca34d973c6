"""Run the potwatch benchmark: the same as `potwatch bench`, with the same arguments.

    .venv/bin/python benchmarks/run_bench.py --quick
    .venv/bin/python benchmarks/run_bench.py --accuracy questions.json --videos videos/ --model Qwen/Qwen2-VL-2B-Instruct
"""

from __future__ import annotations

import sys

from potwatch.app.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
