"""Read an offline W&B run file (``run-ID.wandb``) back: its records, as protobuf messages.

The file is the W&B header (":W&B", 2 magic bytes, a version byte) followed by a LevelDB-style
log: 32 KiB blocks of records, each with a 4-byte checksum, a 2-byte little-endian length and a
type (1 full, 2 first, 3 middle, 4 last); a block's tail too short for a header is padding."""

from pathlib import Path

BLOCK, HEADER = 32768, 7


def records(path: Path) -> list:
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B run file"
    out, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # padding at the end of a block
            pos += left
            continue
        length = int.from_bytes(data[pos + 4 : pos + 6], "little")
        kind = data[pos + 6]
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == 0 and length == 0:
            continue
        pending += chunk
        if kind in (1, 4):  # a whole record
            record = pb.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def summary(path: Path) -> dict:
    """The run's group, job type, config and history rows (key -> JSON value strings)."""
    import json

    run, history = None, []
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run = r.run
        elif kind == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            history.append(row)
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    return {"group": run.run_group, "job_type": run.job_type, "config": config, "history": history}
