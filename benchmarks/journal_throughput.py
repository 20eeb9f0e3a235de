"""How many finished samples per second the driver can commit to the journal (issue 19): one
transaction per sample (before) against one per Ray shard (now), on this machine's disk.

The journal is SQLite in WAL mode with synchronous=FULL: each transaction ends in an fsync. The
samples are real SampleResults from an audit of the bundled digits model (examples/digits.onnx),
copied with new indices. Writes DIR/journal_throughput.json and .md.

Run: .venv/bin/python benchmarks/journal_throughput.py [--samples N] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import fimaudit  # noqa: E402
from fimaudit.journal import Journal  # noqa: E402

SHARDS = (1, 8, 32, 128)


def samples(n: int) -> list[fimaudit.SampleResult]:
    model = fimaudit.load_model(str(ROOT / "examples" / "digits.onnx"))
    x = np.load(ROOT / "examples" / "digits_test.npy")[:4]
    seed = fimaudit.audit(model, x, directions=32).samples
    return [seed[i % len(seed)].model_copy(update={"index": i}) for i in range(n)]


def rate(results: list[fimaudit.SampleResult], shard: int, folder: Path) -> float:
    book = Journal(folder / f"j{shard}.journal", {"bench": shard}, restart=True)
    try:
        start = time.perf_counter()
        for k in range(0, len(results), shard):
            book.commit(results[k:k + shard])
        seconds = time.perf_counter() - start
        assert len(book.finished(len(results))) == len(results)
    finally:
        book.close()
    return len(results) / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks")
    args = ap.parse_args()
    results = samples(args.samples)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=ROOT) as tmp:  # the repo's disk, where a journal would live
        for shard in SHARDS:
            rows.append({"shard": shard, "samples_per_second": rate(results, shard, Path(tmp))})
            print(f"shard {shard}: {rows[-1]['samples_per_second']:.0f} samples/s", flush=True)
    data = {"machine": f"{platform.machine()}, {platform.platform()}", "samples": args.samples, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "journal_throughput.json").write_text(json.dumps(data, indent=1) + "\n")
    lines = ["# Journal commit throughput: per sample against per shard (issue 19)", "",
             f"`benchmarks/journal_throughput.py`; {data['machine']}; {args.samples} real SampleResults (digits audit, "
             "k = 32) committed to a fresh journal (SQLite, WAL, synchronous=FULL: one fsync per transaction).", "",
             "| samples per transaction | samples/s committed |", "|---|---|"]
    lines += [f"| {r['shard']}{' (before: one per sample)' if r['shard'] == 1 else ''} | {r['samples_per_second']:.0f} |" for r in rows]
    (args.out / "journal_throughput.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
