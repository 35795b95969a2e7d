"""The hand-written baseline: pandas reads CSV chunks, predict_proba, Parquet out.

Run with the project's interpreter: ``loop.py MODEL.pkl INPUT.csv OUTPUT.parquet CHUNK``.
Prints one JSON line: the rows and the seconds from the first read to the closed output
(imports and model loading excluded, like Baton's steady-state figure).
"""

from __future__ import annotations

import json
import pickle
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def main(model_path: str, input_path: str, output_path: str, chunk: int) -> None:
    with open(model_path, "rb") as f:
        model = pickle.load(f)
    started = time.perf_counter()
    writer = None
    rows = 0
    for frame in pd.read_csv(input_path, chunksize=chunk, dtype=np.float64):
        proba = model.predict_proba(frame)
        table = pa.table({"row": np.arange(rows, rows + len(frame)),
                          "prediction": model.classes_[proba.argmax(axis=1)],
                          "proba_0": proba[:, 0], "proba_1": proba[:, 1]})
        if writer is None:
            writer = pq.ParquetWriter(output_path, table.schema)
        writer.write_table(table)
        rows += len(frame)
    if writer is not None:
        writer.close()
    seconds = time.perf_counter() - started
    print(json.dumps({"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
